#include "sim/link_model.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace computron::sim {
namespace {
// Flows with fewer bytes left than this are done (guards against float residue).
constexpr double kDoneBytes = 0.5;
}  // namespace

LinkModel::LinkModel(const ClusterSpec& cluster) {
  auto add = [&](double cap, std::string name) {
    capacity_.push_back(cap);
    names_.push_back(std::move(name));
    return static_cast<int>(capacity_.size()) - 1;
  };
  for (int g = 0; g < cluster.numGpus(); ++g) host_link_.push_back(add(cluster.gpus[static_cast<std::size_t>(g)].host_link_bandwidth, "pcie" + std::to_string(g)));
  std::vector<int> uplink_ids;
  for (const auto& u : cluster.uplinks) uplink_ids.push_back(add(u.bandwidth, "uplink:" + u.name));
  for (int g = 0; g < cluster.numGpus(); ++g) {
    int u = cluster.gpus[static_cast<std::size_t>(g)].uplink;
    uplink_of_gpu_.push_back(u >= 0 ? uplink_ids[static_cast<std::size_t>(u)] : -1);
  }
  if (cluster.hasNvlink()) {
    for (int g = 0; g < cluster.numGpus(); ++g) {
      nv_out_.push_back(add(cluster.nvlink_bandwidth, "nvlink-out" + std::to_string(g)));
      nv_in_.push_back(add(cluster.nvlink_bandwidth, "nvlink-in" + std::to_string(g)));
    }
  }
  for (int g = 0; g < cluster.numGpus(); ++g) node_of_gpu_.push_back(cluster.nodeOf(g));
  if (cluster.numNodes() > 1) {
    for (int n = 0; n < cluster.numNodes(); ++n) {
      nic_out_.push_back(add(cluster.network.nic_bandwidth, "nic-out" + std::to_string(n)));
      nic_in_.push_back(add(cluster.network.nic_bandwidth, "nic-in" + std::to_string(n)));
    }
    if (cluster.network.spine_bandwidth > 0) spine_ = add(cluster.network.spine_bandwidth, "spine");
  }
  active_on_.assign(capacity_.size(), {});
  left_.assign(capacity_.size(), 0);
  unfixed_.assign(capacity_.size(), 0);
  mark_.assign(capacity_.size(), 0);
}

std::vector<int> LinkModel::hostPath(GpuId gpu) const {
  std::vector<int> path{host_link_.at(static_cast<std::size_t>(gpu))};
  if (uplink_of_gpu_[static_cast<std::size_t>(gpu)] >= 0) path.push_back(uplink_of_gpu_[static_cast<std::size_t>(gpu)]);
  return path;
}

std::vector<int> LinkModel::peerPath(GpuId via, GpuId target, bool from_device) const {
  if (nv_out_.empty()) throw std::invalid_argument("peer route on a cluster without NVLink");
  if (node_of_gpu_.at(static_cast<std::size_t>(via)) != node_of_gpu_.at(static_cast<std::size_t>(target)))
    throw std::invalid_argument("peer route between GPUs " + std::to_string(via) + " and " + std::to_string(target) +
                                " of different nodes (NVLink joins one node's GPUs)");
  std::vector<int> path;
  if (!from_device) path = hostPath(via);
  path.push_back(nv_out_.at(static_cast<std::size_t>(via)));
  path.push_back(nv_in_.at(static_cast<std::size_t>(target)));
  return path;
}

std::vector<int> LinkModel::remotePath(int from_node, GpuId target) const {
  const int to_node = node_of_gpu_.at(static_cast<std::size_t>(target));
  if (nic_out_.empty() || from_node < 0 || from_node >= static_cast<int>(nic_out_.size()) || from_node == to_node)
    throw std::invalid_argument("remote route from node " + std::to_string(from_node) + " to GPU " +
                                std::to_string(target) + ": needs another node of a multi-node cluster");
  std::vector<int> path{nic_out_[static_cast<std::size_t>(from_node)]};
  if (spine_ >= 0) path.push_back(spine_);
  path.push_back(nic_in_[static_cast<std::size_t>(to_node)]);
  const std::vector<int> host = hostPath(target);
  path.insert(path.end(), host.begin(), host.end());
  return path;
}

FlowId LinkModel::start(Nanos now, double bytes, std::vector<int> path, Nanos latency) {
  for (int r : path)
    if (r < 0 || r >= numResources()) throw std::invalid_argument("LinkModel: no resource " + std::to_string(r));
  advance(now);
  const FlowId id = next_id_++;
  std::uint32_t slot = 0;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    slot = static_cast<std::uint32_t>(slots_.size());
    slots_.emplace_back();
  }
  slot_of_.emplace(id, slot);
  Flow& f = slots_[slot];
  const std::uint32_t mark = f.mark;  // visit stamps stay valid across reuse
  f = Flow{};
  f.mark = mark;
  f.id = id;
  f.path = std::move(path);
  f.latency = latency;
  const bool moves = bytes > kDoneBytes;
  if (!moves) {
    f.drained_at = now;
    completions_.push(Completion{addSaturating(now, latency), id, slot});
  } else {
    f.base_remaining = bytes;
    f.base_time = now;
    ++moving_;
  }
  for (int r : f.path) {
    if (moves) active_on_[static_cast<std::size_t>(r)].emplace_back(id, slot);  // ids only grow: stays sorted
    changed_.push_back(r);
  }
  recomputeRates();
  dropStaleDrains();
  return id;
}

void LinkModel::detach(const Flow& f) {
  for (int r : f.path) {
    auto& on = active_on_[static_cast<std::size_t>(r)];
    on.erase(std::lower_bound(on.begin(), on.end(), f.id, [](const auto& e, FlowId key) { return e.first < key; }));
    changed_.push_back(r);
  }
}

bool LinkModel::stale(const DrainEntry& e) const {
  const Flow& f = slots_[e.slot];
  return f.id != e.id || f.version != e.version || f.drained_at >= 0;
}

void LinkModel::advance(Nanos now) {
  if (now < now_) throw std::logic_error("LinkModel: time went backwards");
  now_ = now;
  while (!drains_.empty() && drains_.top().at <= now) {
    const DrainEntry e = drains_.top();
    drains_.pop();
    if (stale(e)) continue;  // completed since, or superseded by a later rate
    Flow& f = slots_[e.slot];
    f.drained_at = now;
    f.rate = 0;
    --moving_;
    completions_.push(Completion{addSaturating(now, f.latency), e.id, e.slot});
    detach(f);
  }
}

// The flow's bytes at now_ at its old rate become its new base; its drain time follows from the
// new rate, rounded up to the nanosecond once.
void LinkModel::setRate(std::uint32_t slot, double rate) {
  Flow& f = slots_[slot];
  if (rate == f.rate && f.version != 0) return;  // unchanged: its drain time stands
  if (f.version != 0 && now_ != f.base_time) {
    f.base_remaining -= f.rate * (static_cast<double>(now_ - f.base_time) / 1e9);
    f.base_time = now_;
  }
  f.rate = rate;
  ++f.version;
  if (f.base_remaining <= kDoneBytes) {
    f.drain_at = now_;
  } else if (rate <= 0) {
    f.drain_at = kMaxNanos;
    return;
  } else {
    const double ns = std::ceil(f.base_remaining / rate * 1e9);
    f.drain_at = ns >= static_cast<double>(kMaxNanos) ? kMaxNanos : addSaturating(now_, static_cast<Nanos>(ns));
  }
  drains_.push(DrainEntry{f.drain_at, f.id, slot, f.version});
}

// Max-min fair shares by progressive filling: repeatedly saturate the resource whose equal
// share among its unfixed flows is smallest (ties: the lowest resource index). Only the group of
// flows and resources connected to a change is refilled; shares in a connected group depend on
// nothing outside it, so every rate is what a refill of all flows would give, to the bit.
void LinkModel::recomputeRates() {
  if (changed_.empty()) return;
  if (++stamp_ == 0) {
    std::fill(mark_.begin(), mark_.end(), 0);
    for (Flow& f : slots_) f.mark = 0;
    stamp_ = 1;
  }
  group_resources_.clear();
  group_flows_.clear();
  // Breadth-first over resource -> flows moving over it -> their other resources.
  std::vector<int>& frontier = changed_;
  while (!frontier.empty()) {
    const int r = frontier.back();
    frontier.pop_back();
    if (mark_[static_cast<std::size_t>(r)] == stamp_) continue;
    mark_[static_cast<std::size_t>(r)] = stamp_;
    group_resources_.push_back(r);
    for (const auto& [id, slot] : active_on_[static_cast<std::size_t>(r)]) {
      Flow& f = slots_[slot];
      if (f.mark == stamp_) continue;
      f.mark = stamp_;
      group_flows_.emplace_back(id, slot);
      for (int next : f.path)
        if (mark_[static_cast<std::size_t>(next)] != stamp_) frontier.push_back(next);
    }
  }
  std::sort(group_resources_.begin(), group_resources_.end());
  std::sort(group_flows_.begin(), group_flows_.end());
  group_active_.clear();
  for (int r : group_resources_) {
    left_[static_cast<std::size_t>(r)] = capacity_[static_cast<std::size_t>(r)];
    unfixed_[static_cast<std::size_t>(r)] = 0;
  }
  for (const auto& entry : group_flows_) {
    Flow& f = slots_[entry.second];
    f.new_rate = 0;
    group_active_.push_back(&f);
    for (int r : f.path) ++unfixed_[static_cast<std::size_t>(r)];
  }
  fixed_.assign(group_active_.size(), false);
  std::size_t remaining = group_active_.size();
  while (remaining > 0) {
    int bottleneck = -1;
    double share = std::numeric_limits<double>::infinity();
    for (int r : group_resources_) {
      const auto ri = static_cast<std::size_t>(r);
      if (unfixed_[ri] == 0) continue;
      double s = std::max(0.0, left_[ri]) / unfixed_[ri];
      if (s < share) {
        share = s;
        bottleneck = r;
      }
    }
    if (bottleneck < 0) break;
    for (std::size_t i = 0; i < group_active_.size(); ++i) {
      if (fixed_[i]) continue;
      const auto& path = group_active_[i]->path;
      if (std::find(path.begin(), path.end(), bottleneck) == path.end()) continue;
      group_active_[i]->new_rate = share;
      fixed_[i] = true;
      --remaining;
      for (int r : path) {
        left_[static_cast<std::size_t>(r)] -= share;
        --unfixed_[static_cast<std::size_t>(r)];
      }
    }
  }
  for (std::size_t i = 0; i < group_active_.size(); ++i) setRate(group_flows_[i].second, group_active_[i]->new_rate);
  dropStaleDrains();
}

// Keeps the drain heap's top current (so nextCompletion reads it as is) and its stale entries
// bounded.
void LinkModel::dropStaleDrains() {
  while (!drains_.empty() && stale(drains_.top())) drains_.pop();
  if (drains_.size() > 2 * moving_ + 64) {
    std::vector<DrainEntry> live;
    live.reserve(moving_);
    while (!drains_.empty()) {
      if (!stale(drains_.top())) live.push_back(drains_.top());
      drains_.pop();
    }
    drains_ = decltype(drains_)(std::greater<>(), std::move(live));
  }
}

std::optional<Nanos> LinkModel::nextCompletion() const {
  std::optional<Nanos> best;
  if (!completions_.empty()) best = completions_.top().at;
  if (!drains_.empty() && drains_.top().at < kMaxNanos && (!best || drains_.top().at < *best)) best = drains_.top().at;
  return best;
}

std::vector<FlowId> LinkModel::takeCompleted(Nanos now) {
  advance(now);
  std::vector<FlowId> done;
  while (!completions_.empty() && completions_.top().at <= now) {
    const Completion c = completions_.top();
    completions_.pop();
    done.push_back(c.id);
    slot_of_.erase(c.id);
    Flow& f = slots_[c.slot];
    f.id = 0;
    f.path.clear();
    free_slots_.push_back(c.slot);
  }
  std::sort(done.begin(), done.end());
  recomputeRates();  // the flows connected to those that drained, if any
  dropStaleDrains();
  return done;
}

const LinkModel::Flow& LinkModel::flowOf(FlowId id) const { return slots_[slot_of_.at(id)]; }

double LinkModel::rateOf(FlowId id) const {
  const Flow& f = flowOf(id);
  return f.drained_at >= 0 ? 0.0 : f.rate;
}

}  // namespace computron::sim
