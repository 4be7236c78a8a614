#include "common/core/placement.h"
#include "common/core/policy.h"

namespace computron {
namespace {

template <typename Policy>
PolicyKindListing listingOf(std::string key, std::string title, std::string field) {
  PolicyKindListing listing{std::move(key), std::move(title), std::move(field), {}};
  for (const auto& e : Choice<Policy>::registry().entries()) listing.policies.push_back({e.name, e.description});
  return listing;
}

}  // namespace

std::vector<PolicyKindListing> registeredPolicies() {
  return {listingOf<PolicySet>("set", "policy sets", "policy.name"),
          listingOf<EvictionPolicy>("eviction", "eviction policies", "policy.eviction"),
          listingOf<QueuePolicy>("queue", "queue policies", "policy.queue"),
          listingOf<PrefetchPolicy>("prefetch", "prefetch policies", "policy.prefetch"),
          listingOf<RoutingPolicy>("routing", "routing policies", "policy.routing"),
          listingOf<PlacementPolicy>("placement", "placement policies", "policy.placement.policy")};
}

}  // namespace computron
