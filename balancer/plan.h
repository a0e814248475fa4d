// Placement planning for the balancer (docs/placement.md): which worker
// should host which experts, from the load each expert carries, in the
// manner of EPLB (DeepSeek's expert-parallel load balancer).
//
//  1. Replicas: every expert once; then, where the workers' room allows,
//     a second copy of every expert (hottest first: a lost worker then
//     leaves nothing uncovered); then extra copies, one at a time, to the
//     expert with the most load per copy.
//  2. Places, heaviest copies first: a worker that hosts the expert now
//     keeps a copy while its load of the layer stays within
//     (1 + stickiness) x the layer's mean per worker (fewer bytes move);
//     then every other copy goes to the worker with the least load of its
//     layer among those with room that do not host the expert yet.
//
// Load is per (layer, expert), in any unit (tokens per second); an expert
// with copies is assumed to have its load split evenly among them, as the
// router does (router/remote/remote_expert_backend.cc). Imbalance is EPLB's
// ratio, (max - mean) / mean of the workers' load, per layer; a plan is
// judged by its worst layer.
//
// Thread-compatible: plain functions of values.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/expert_segment.h"
#include "common/expert_set.h"
#include "common/model_spec.h"

namespace moe::balancer {

// What the balancer knows of one worker.
struct WorkerState {
  std::string address;
  bool live = false;     // answering, serving this model, changeable
  bool leaving = false;  // stopping: its experts must move away
  common::ExpertSet hosted;
  int64_t capacity_bytes = 0;  // weights it may hold
};

struct PlanOptions {
  // How far above the layer's mean load per worker a current host may go
  // and still keep its copy (0.1: 10%).
  double stickiness = 0.1;
};

// Tokens (or tokens per second) by expert.
using ExpertLoad = std::map<common::ExpertKey, double>;

struct Plan {
  std::vector<common::ExpertSet> target;  // by worker (empty: not live)
  std::map<common::ExpertKey, int> replicas;
  // Experts no live worker could take (the pool's room is too small).
  common::ExpertSet unplaced;
};

// Weight bytes of one expert of `layer` (float32).
int64_t ExpertBytes(const common::LayerSpec& layer);

// The placement for `load` over the live, staying workers.
Plan MakePlan(const common::ModelSpec& spec, const ExpertLoad& load,
              const std::vector<WorkerState>& workers,
              const PlanOptions& options = {});

// Per-worker load of layer `layer` under `placement` (by worker), each
// expert's load split evenly among its hosts.
std::vector<double> WorkerLoads(const std::vector<common::ExpertSet>& placement,
                                const ExpertLoad& load, int32_t layer);

// (max - mean) / mean of WorkerLoads over the workers in `counted` (by
// worker), 0 without load.
double Imbalance(const std::vector<common::ExpertSet>& placement,
                 const ExpertLoad& load, int32_t layer,
                 const std::vector<bool>& counted);

// The worst layer's Imbalance.
double WorstImbalance(const common::ModelSpec& spec,
                      const std::vector<common::ExpertSet>& placement,
                      const ExpertLoad& load, const std::vector<bool>& counted);

// How many hosts each expert of the model has under `placement` (0 for
// none).
std::map<common::ExpertKey, int> CopyCounts(
    const common::ModelSpec& spec,
    const std::vector<common::ExpertSet>& placement);

}  // namespace moe::balancer
