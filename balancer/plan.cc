#include "balancer/plan.h"

#include <algorithm>
#include <limits>
#include <set>
#include <tuple>

namespace moe::balancer {
namespace {

double LoadOf(const ExpertLoad& load, common::ExpertKey key) {
  auto it = load.find(key);
  return it == load.end() ? 0.0 : it->second;
}

// Each layer's load as shares of that layer's total, so that hot experts
// of any layer compete for copies on one scale (a layer without load
// counts every expert the same).
ExpertLoad Shares(const common::ModelSpec& spec, const ExpertLoad& load) {
  ExpertLoad out;
  for (size_t l = 0; l < spec.layers.size(); ++l) {
    const int64_t n = spec.layers[l].config.total_experts();
    double total = 0;
    for (int64_t e = 0; e < n; ++e) {
      total += LoadOf(load, {static_cast<int32_t>(l), e});
    }
    for (int64_t e = 0; e < n; ++e) {
      const common::ExpertKey key{static_cast<int32_t>(l), e};
      out[key] = total > 0 ? LoadOf(load, key) / total : 1.0 / n;
    }
  }
  return out;
}

}  // namespace

int64_t ExpertBytes(const common::LayerSpec& layer) {
  return 4 * layer.config.expert_parameters();
}

Plan MakePlan(const common::ModelSpec& spec, const ExpertLoad& load,
              const std::vector<WorkerState>& workers,
              const PlanOptions& options) {
  const size_t layers = spec.layers.size();
  const int n = static_cast<int>(workers.size());
  Plan plan;
  plan.target.assign(n, common::ExpertSet(layers));
  plan.unplaced = common::ExpertSet(layers);
  std::vector<int> usable;
  int64_t room = 0;
  for (int w = 0; w < n; ++w) {
    if (workers[w].live && !workers[w].leaving) {
      usable.push_back(w);
      room += workers[w].capacity_bytes;
    }
  }
  const std::vector<common::ExpertKey> keys =
      common::ExpertSet::All(spec).keys();
  const ExpertLoad share = Shares(spec, load);
  // 1. Copies per expert within the pool's room.
  std::vector<common::ExpertKey> by_load = keys;
  std::stable_sort(by_load.begin(), by_load.end(),
                   [&](const common::ExpertKey& a, const common::ExpertKey& b) {
                     return share.at(a) > share.at(b);
                   });
  const int most = static_cast<int>(usable.size());
  for (const common::ExpertKey& key : keys) {
    const int64_t bytes = ExpertBytes(spec.layers[key.layer]);
    plan.replicas[key] = 0;
    if (most > 0 && bytes <= room) {
      plan.replicas[key] = 1;
      room -= bytes;
    }
  }
  for (const common::ExpertKey& key : by_load) {
    const int64_t bytes = ExpertBytes(spec.layers[key.layer]);
    if (plan.replicas[key] == 1 && most >= 2 && bytes <= room) {
      plan.replicas[key] = 2;
      room -= bytes;
    }
  }
  while (true) {
    const common::ExpertKey* best = nullptr;
    double best_per_copy = 0;
    for (const common::ExpertKey& key : by_load) {
      const int r = plan.replicas[key];
      if (r == 0 || r >= most) continue;
      if (ExpertBytes(spec.layers[key.layer]) > room) continue;
      const double per_copy = share.at(key) / r;
      if (per_copy > best_per_copy) {
        best = &key;
        best_per_copy = per_copy;
      }
    }
    if (best == nullptr) break;
    ++plan.replicas[*best];
    room -= ExpertBytes(spec.layers[best->layer]);
  }
  // 2. Copies heaviest first onto the least-loaded worker of their layer.
  struct Copy {
    double load;
    common::ExpertKey key;
  };
  std::vector<Copy> copies;
  for (const common::ExpertKey& key : keys) {
    const int r = plan.replicas[key];
    for (int k = 0; k < r; ++k) copies.push_back({share.at(key) / r, key});
  }
  std::stable_sort(copies.begin(), copies.end(),
                   [](const Copy& a, const Copy& b) {
                     return std::tie(b.load, a.key) < std::tie(a.load, b.key);
                   });
  std::vector<std::vector<double>> layer_load(layers,
                                              std::vector<double>(n, 0.0));
  std::vector<int64_t> used(n, 0);
  const double mean = usable.empty() ? 0 : 1.0 / usable.size();
  auto fits = [&](int w, const Copy& c) {
    return !plan.target[w].Contains(c.key) &&
           used[w] + ExpertBytes(spec.layers[c.key.layer]) <=
               workers[w].capacity_bytes;
  };
  auto place = [&](int w, const Copy& c) {
    plan.target[w].Add(c.key);
    layer_load[c.key.layer][w] += c.load;
    used[w] += ExpertBytes(spec.layers[c.key.layer]);
  };
  // Room the current copies not placed yet would take back where they
  // are: kept free between equals, so that a balanced placement stays.
  // A copy at most kDisplaces x as heavy as the heaviest of them may not
  // take that room; a heavier one may (the lighter copy moves instead).
  constexpr double kDisplaces = 1.5;
  std::vector<int64_t> reserved(n, 0);
  std::vector<std::multiset<double>> reserved_loads(n);
  std::map<common::ExpertKey, double> first_load;  // before any drop
  for (const Copy& c : copies) first_load[c.key] = c.load;
  auto copy_load = [&](const common::ExpertKey& key) {
    auto it = first_load.find(key);
    return it == first_load.end() ? 0.0 : it->second;
  };
  for (int w : usable) {
    for (const common::ExpertKey& key : workers[w].hosted.keys()) {
      if (plan.replicas.count(key) != 0 && plan.replicas[key] > 0) {
        reserved[w] += ExpertBytes(spec.layers[key.layer]);
        reserved_loads[w].insert(copy_load(key));
      }
    }
  }
  // Copies of one expert are consecutive (same load, then key order).
  for (size_t i = 0; i < copies.size(); ++i) {
    const Copy& c = copies[i];
    const int64_t bytes = ExpertBytes(spec.layers[c.key.layer]);
    if (i == 0 || copies[i - 1].key != c.key) {
      for (int w : usable) {
        if (!workers[w].hosted.Contains(c.key)) continue;
        reserved[w] -= bytes;
        auto it = reserved_loads[w].find(copy_load(c.key));
        if (it != reserved_loads[w].end()) reserved_loads[w].erase(it);
      }
    }
    // A current host keeps its copy while its load of the layer stays
    // within (1 + stickiness) x the mean (fewer bytes move).
    int best = -1;
    for (int w : usable) {
      if (!workers[w].hosted.Contains(c.key) || !fits(w, c)) continue;
      if (layer_load[c.key.layer][w] + c.load >
          mean * (1 + options.stickiness) + 1e-12) {
        continue;
      }
      if (best < 0 ||
          layer_load[c.key.layer][w] < layer_load[c.key.layer][best]) {
        best = w;
      }
    }
    // Else the least-loaded worker of the layer with room that does not
    // host the expert yet, leaving the room its own copies will take back
    // unless this copy is clearly heavier than they are; between equals,
    // the emptiest.
    auto free_room = [&](int w) {
      return used[w] + reserved[w] + bytes <= workers[w].capacity_bytes ||
             reserved_loads[w].empty() ||
             c.load > kDisplaces * *reserved_loads[w].rbegin();
    };
    bool any_free = false;
    for (int w : usable) any_free |= fits(w, c) && free_room(w);
    if (best < 0) {
      for (int w : usable) {
        if (!fits(w, c) || (any_free && !free_room(w))) continue;
        if (best < 0) {
          best = w;
          continue;
        }
        const double load = layer_load[c.key.layer][w];
        const double best_load = layer_load[c.key.layer][best];
        if (load != best_load) {
          if (load < best_load) best = w;
          continue;
        }
        if (used[w] < used[best]) best = w;
      }
    }
    if (best < 0) {
      --plan.replicas[c.key];
      continue;
    }
    place(best, c);
  }
  for (const common::ExpertKey& key : keys) {
    if (plan.replicas[key] <= 0) plan.unplaced.Add(key);
  }
  return plan;
}

std::vector<double> WorkerLoads(const std::vector<common::ExpertSet>& placement,
                                const ExpertLoad& load, int32_t layer) {
  std::map<int64_t, int> copies;
  for (const common::ExpertSet& s : placement) {
    if (static_cast<size_t>(layer) >= s.layers()) continue;
    for (int64_t e : s.ids(layer)) ++copies[e];
  }
  std::vector<double> out(placement.size(), 0.0);
  for (size_t w = 0; w < placement.size(); ++w) {
    if (static_cast<size_t>(layer) >= placement[w].layers()) continue;
    for (int64_t e : placement[w].ids(layer)) {
      out[w] += LoadOf(load, {layer, e}) / copies[e];
    }
  }
  return out;
}

double Imbalance(const std::vector<common::ExpertSet>& placement,
                 const ExpertLoad& load, int32_t layer,
                 const std::vector<bool>& counted) {
  const std::vector<double> loads = WorkerLoads(placement, load, layer);
  double total = 0, most = 0;
  int count = 0;
  for (size_t w = 0; w < loads.size(); ++w) {
    if (!counted[w]) continue;
    total += loads[w];
    most = std::max(most, loads[w]);
    ++count;
  }
  if (count == 0 || total <= 0) return 0;
  const double mean = total / count;
  return (most - mean) / mean;
}

double WorstImbalance(const common::ModelSpec& spec,
                      const std::vector<common::ExpertSet>& placement,
                      const ExpertLoad& load,
                      const std::vector<bool>& counted) {
  double worst = 0;
  for (size_t l = 0; l < spec.layers.size(); ++l) {
    worst = std::max(
        worst, Imbalance(placement, load, static_cast<int32_t>(l), counted));
  }
  return worst;
}

std::map<common::ExpertKey, int> CopyCounts(
    const common::ModelSpec& spec,
    const std::vector<common::ExpertSet>& placement) {
  std::map<common::ExpertKey, int> out;
  for (const common::ExpertKey& key : common::ExpertSet::All(spec).keys()) {
    out[key] = 0;
  }
  for (const common::ExpertSet& s : placement) {
    for (const common::ExpertKey& key : s.keys()) ++out[key];
  }
  return out;
}

}  // namespace moe::balancer
