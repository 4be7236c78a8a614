#include "common/core/oracle.h"

#include <algorithm>

namespace computron {

ArrivalOracle::ArrivalOracle(std::vector<std::vector<Nanos>> arrivals) : arrivals_(std::move(arrivals)) {}

std::shared_ptr<const ArrivalOracle> ArrivalOracle::fromSource(RequestSource& source, std::size_t num_models) {
  std::vector<std::vector<Nanos>> arrivals(num_models);
  while (auto r = source.next()) {
    if (r->model >= 0 && static_cast<std::size_t>(r->model) < num_models)
      arrivals[static_cast<std::size_t>(r->model)].push_back(r->arrival);
  }
  if (!source.exhausted())
    throw ConfigError("the oracle policies need an open-loop workload (a closed-loop workload has no known future)");
  for (auto& a : arrivals) a.shrink_to_fit();
  return std::make_shared<const ArrivalOracle>(std::move(arrivals));
}

Nanos ArrivalOracle::nextArrival(ModelId model, Nanos t) const {
  if (model < 0 || static_cast<std::size_t>(model) >= arrivals_.size()) return kNever;
  const auto& a = arrivals_[static_cast<std::size_t>(model)];
  auto it = std::lower_bound(a.begin(), a.end(), t);
  return it == a.end() ? kNever : *it;
}

std::int64_t ArrivalOracle::arrivalsBetween(ModelId model, Nanos from, Nanos to) const {
  if (model < 0 || static_cast<std::size_t>(model) >= arrivals_.size() || to <= from) return 0;
  const auto& a = arrivals_[static_cast<std::size_t>(model)];
  return std::lower_bound(a.begin(), a.end(), to) - std::lower_bound(a.begin(), a.end(), from);
}

}  // namespace computron
