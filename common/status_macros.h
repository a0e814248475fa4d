// Status helpers missing from abseil 20220623 (it has no status macros).
//
// Example:
//   absl::StatusOr<Checkpoint> Load(const std::string& path) {
//     MOE_ASSIGN_OR_RETURN(auto reader, SafetensorsReader::Open(path));
//     MOE_RETURN_IF_ERROR(Validate(*reader));
//     ...
//   }
#pragma once

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MOE_STATUS_CONCAT_INNER_(a, b) a##b
#define MOE_STATUS_CONCAT_(a, b) MOE_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status); returns it from the enclosing function
// unless it is OK.
#define MOE_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::absl::Status moe_status_ = (expr);       \
    if (!moe_status_.ok()) return moe_status_; \
  } while (0)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status from
// the enclosing function, otherwise moves the value into `lhs`, which may be a
// declaration (`auto x`) or an existing lvalue.
#define MOE_ASSIGN_OR_RETURN(lhs, rexpr)                                       \
  MOE_ASSIGN_OR_RETURN_IMPL_(MOE_STATUS_CONCAT_(moe_statusor_, __LINE__), lhs, \
                             rexpr)

#define MOE_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr)   \
  auto statusor = (rexpr);                                 \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()
