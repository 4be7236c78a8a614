#include "common/core/prefetch.h"

#include <memory>

#include "common/core/engine.h"
#include "common/core/oracle.h"

namespace computron {
namespace {

// The seed's: no prefetching.
class NoPrefetch final : public PrefetchPolicy {
 public:
  bool active() const override { return false; }
  double score(ModelId /*m*/, const Engine& /*engine*/) const override { return 0; }
};

// Predicts each model's arrival rate (an EWMA kept by the engine) and loads the hottest. Evicts
// only idle models at most half as hot: hysteresis, so two models of similar rate do not trade
// places.
class RatePrefetch final : public PrefetchPolicy {
 public:
  double score(ModelId m, const Engine& engine) const override { return engine.arrivalRate(m); }
  double keepThreshold(double score) const override { return 0.5 * score; }
};

// Offline: loads the model whose next request comes soonest, evicting only idle models needed
// later than it.
class OraclePrefetch final : public PrefetchPolicy {
 public:
  bool needsFuture() const override { return true; }
  double score(ModelId m, const Engine& engine) const override {
    const Nanos now = engine.now();
    const Nanos next = engine.future()->nextArrival(m, now);
    if (next == ArrivalOracle::kNever) return -1;
    return 1.0 / (1.0 + toSeconds(next - now));  // sooner is hotter
  }
};

}  // namespace

PrefetchPolicy::Pick PrefetchPolicy::pick(const Engine& engine) const {
  Pick best;
  const auto num_models = static_cast<ModelId>(engine.config().models.size());
  for (ModelId m = 0; m < num_models; ++m) {
    const auto& s = engine.model(m);
    if (s.residency != Residency::kOffloaded || !s.queue.empty() || !engine.modelAvailable(m)) continue;
    const double score = this->score(m, engine);
    if (score > best.score) best = {m, score};
  }
  return best;
}

const Registry<PrefetchPolicy>& policyRegistry(const PrefetchPolicy*) {
  static const Registry<PrefetchPolicy> registry = [] {
    Registry<PrefetchPolicy> r("prefetch policy");
    r.add("none", "no prefetching (the seed's)", [] { return std::make_unique<NoPrefetch>(); });
    r.add("rate", "loads the offloaded model with the highest predicted arrival rate into idle links",
          [] { return std::make_unique<RatePrefetch>(); });
    r.add("oracle", "offline: loads the model whose next request comes soonest (reads the workload ahead)",
          [] { return std::make_unique<OraclePrefetch>(); });
    return r;
  }();
  return registry;
}

}  // namespace computron
