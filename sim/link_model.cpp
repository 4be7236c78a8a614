#include "sim/link_model.h"

#include <algorithm>
#include <cmath>
#include <limits>

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
}

std::vector<int> LinkModel::hostPath(GpuId gpu) const {
  std::vector<int> path{host_link_.at(static_cast<std::size_t>(gpu))};
  if (uplink_of_gpu_[static_cast<std::size_t>(gpu)] >= 0) path.push_back(uplink_of_gpu_[static_cast<std::size_t>(gpu)]);
  return path;
}

std::vector<int> LinkModel::peerPath(GpuId via, GpuId target, bool from_device) const {
  if (nv_out_.empty()) throw std::invalid_argument("peer route on a cluster without NVLink");
  std::vector<int> path;
  if (!from_device) path = hostPath(via);
  path.push_back(nv_out_.at(static_cast<std::size_t>(via)));
  path.push_back(nv_in_.at(static_cast<std::size_t>(target)));
  return path;
}

FlowId LinkModel::start(Nanos now, double bytes, std::vector<int> path, Nanos latency) {
  advance(now);
  FlowId id = next_id_++;
  Flow f;
  f.remaining = bytes;
  f.path = std::move(path);
  f.latency = latency;
  if (bytes <= kDoneBytes) f.drained_at = now;
  flows_.emplace(id, std::move(f));
  recomputeRates();
  return id;
}

bool LinkModel::advance(Nanos now) {
  if (now < now_) throw std::logic_error("LinkModel: time went backwards");
  double dt = static_cast<double>(now - now_) / 1e9;
  bool drained_any = false;
  for (auto& [id, f] : flows_) {
    if (f.drained_at >= 0) continue;
    f.remaining -= f.rate * dt;
    if (f.remaining <= kDoneBytes) {
      f.remaining = 0;
      f.drained_at = now;
      drained_any = true;
    }
  }
  now_ = now;
  return drained_any;
}

// Max-min fair shares by progressive filling: repeatedly saturate the resource whose equal
// share among its unfixed flows is smallest.
void LinkModel::recomputeRates() {
  std::vector<double> left = capacity_;
  std::vector<int> unfixed(capacity_.size(), 0);
  std::vector<Flow*> active;
  for (auto& [id, f] : flows_) {
    f.rate = 0;
    if (f.drained_at >= 0) continue;
    active.push_back(&f);
    for (int r : f.path) ++unfixed[static_cast<std::size_t>(r)];
  }
  std::vector<bool> fixed(active.size(), false);
  std::size_t remaining = active.size();
  while (remaining > 0) {
    int bottleneck = -1;
    double share = std::numeric_limits<double>::infinity();
    for (std::size_t r = 0; r < left.size(); ++r) {
      if (unfixed[r] == 0) continue;
      double s = std::max(0.0, left[r]) / unfixed[r];
      if (s < share) {
        share = s;
        bottleneck = static_cast<int>(r);
      }
    }
    if (bottleneck < 0) break;
    for (std::size_t i = 0; i < active.size(); ++i) {
      if (fixed[i]) continue;
      const auto& path = active[i]->path;
      if (std::find(path.begin(), path.end(), bottleneck) == path.end()) continue;
      active[i]->rate = share;
      fixed[i] = true;
      --remaining;
      for (int r : path) {
        left[static_cast<std::size_t>(r)] -= share;
        --unfixed[static_cast<std::size_t>(r)];
      }
    }
  }
}

std::optional<Nanos> LinkModel::nextCompletion() const {
  std::optional<Nanos> best;
  for (const auto& [id, f] : flows_) {
    Nanos t;
    if (f.drained_at >= 0) {
      t = f.drained_at + f.latency;
    } else {
      if (f.rate <= 0) continue;
      // Its bytes drain here; the rates of the others change at that moment.
      t = now_ + static_cast<Nanos>(std::ceil(f.remaining / f.rate * 1e9));
    }
    if (!best || t < *best) best = t;
  }
  return best;
}

std::vector<FlowId> LinkModel::takeCompleted(Nanos now) {
  bool changed = advance(now);
  std::vector<FlowId> done;
  for (auto it = flows_.begin(); it != flows_.end();) {
    if (it->second.drained_at >= 0 && it->second.drained_at + it->second.latency <= now) {
      done.push_back(it->first);
      it = flows_.erase(it);
    } else {
      ++it;
    }
  }
  if (changed) recomputeRates();
  return done;
}

double LinkModel::rateOf(FlowId id) const { return flows_.at(id).rate; }

}  // namespace computron::sim
