// Compute time of one batch from a roofline: each pipeline stage takes the larger of its FLOPs over
// the GPU's effective matrix rate and its bytes (weights + KV cache) over effective HBM bandwidth,
// plus a per-layer launch overhead, plus ring all-reduces over NVLink for tensor parallelism and an
// activation send between pipeline stages (over the network where a group or a stage boundary
// spans nodes). Prefill produces each request's first token; decode
// steps then run for the whole batch until its longest request is done (request-level batching).
//
// Two sources implement one interface: the roofline (RooflineCostModel) and a profile measured on
// GPUs by `computron calibrate` (ProfiledCostModel, docs/specs.md "Profiles"), chosen per model:
// a model whose preset and layout the profile holds is timed by the profile, any other by the
// roofline.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/cluster_spec.h"
#include "common/deployment.h"
#include "common/workload.h"

namespace computron {

struct BatchTimes {
  Nanos first_token = 0;       // offset from batch start
  std::vector<Nanos> finish;   // per request, offset from batch start
  Nanos total = 0;             // when the batch releases its GPUs
  bool outside_profile = false;  // a profiled shape fell outside the measured grid (extrapolated)
};

struct StepTime {
  Nanos time = 0;
  bool outside_profile = false;
};

class CostModel {
 public:
  virtual ~CostModel() = default;
  // `first_after_load`: the model's first batch since a load of it; `idle`: how long its GPUs sat
  // without a batch before it; `busy`: how long they had worked before it without resting
  // powerRecover() (a profile's power model: prefill then runs hot). All add measured extra costs.
  virtual BatchTimes batchTimes(const ModelDeployment& model, const std::vector<Request>& requests,
                                bool first_after_load = false, Nanos idle = 0, Nanos busy = 0) const = 0;
  // Iteration-level batching, one step of a session. A prefill step over sequences whose KV
  // caches fill `contexts[i]` tokens each (a prompt, or a preempted sequence's prompt and tokens
  // so far); a decode step makes one token of each of `batch` sequences whose contexts hold
  // `total_context` tokens together (before the step). Both include what a batch's end costs.
  virtual StepTime prefillStep(const ModelDeployment& model, const std::vector<std::int32_t>& contexts,
                               bool first_after_load = false, Nanos idle = 0, Nanos busy = 0) const = 0;
  virtual StepTime decodeStep(const ModelDeployment& model, int batch, double total_context) const = 0;
  // The idle time after which this model's GPUs count as rested (their `busy` starts again from
  // 0); 0: no power model for it.
  virtual Nanos powerRecover(const ModelDeployment& /*model*/) const { return 0; }
  // Capturing the decode graph of `batch` sequences (a profile's decode_graph_ms; 0: the
  // roofline, or none measured): the simulator adds it to a decode step at a batch size the
  // model's graphs lack. `tracksDecodeGraphs`: whether the model has such a cost at all.
  virtual Nanos decodeGraphCapture(const ModelDeployment& /*model*/, int /*batch*/) const { return 0; }
  virtual bool tracksDecodeGraphs(const ModelDeployment& /*model*/) const { return false; }
  // "profile" or "roofline": which source times this model's batches.
  virtual std::string sourceFor(const ModelDeployment& model) const = 0;
  // Where a profile times the model: "measured" when its prefill shape is fitted to the grid
  // (PrefillShape), else "roofline". Empty when no profile times it.
  virtual std::string prefillShapeFor(const ModelDeployment& /*model*/) const { return ""; }
};

// The cluster's profile when it names one (ClusterSpec::profile), else the roofline.
std::unique_ptr<CostModel> makeCostModel(const ClusterSpec& cluster);

class RooflineCostModel final : public CostModel {
 public:
  explicit RooflineCostModel(const ClusterSpec& cluster) : cluster_(cluster) {}
  BatchTimes batchTimes(const ModelDeployment& model, const std::vector<Request>& requests,
                        bool first_after_load = false, Nanos idle = 0, Nanos busy = 0) const override;
  StepTime prefillStep(const ModelDeployment& model, const std::vector<std::int32_t>& contexts,
                       bool first_after_load = false, Nanos idle = 0, Nanos busy = 0) const override;
  StepTime decodeStep(const ModelDeployment& model, int batch, double total_context) const override;
  std::string sourceFor(const ModelDeployment&) const override { return "roofline"; }
  // One all-reduce of `bytes` over `tp` GPUs: over NVLink within a node, over each GPU's share of
  // its node's NIC (and the network's latency) when the group spans nodes.
  Nanos allReduceTime(double bytes, int tp, bool across_nodes = false) const;
  // Sending `bytes` of activations from one pipeline stage to the next.
  Nanos stageSendTime(double bytes, bool across_nodes) const;
  // One prefill pass over `tokens` prompt tokens whose attention covers `causal_pairs` (query, key)
  // pairs (a prompt of p tokens: p (p + 1) / 2).
  Nanos prefillPass(const ModelDeployment& model, double tokens, double causal_pairs) const {
    return passTime(model, tokens, causal_pairs, 0);
  }

 private:
  // Time of one pass of `tokens` new tokens over pipeline stage `stage`. `attended` counts
  // (query, key) pairs of attention; `kv_read_tokens` the cached tokens whose K and V are read.
  Nanos stageTime(const ModelDeployment& model, int stage, double tokens, double attended,
                  double kv_read_tokens) const;
  // One pass over every stage, with the activation sends between them.
  Nanos passTime(const ModelDeployment& model, double tokens, double attended, double kv_read_tokens) const;
  const ClusterSpec& cluster_;
};

// Times from the measured grids (ProfileGrid): prefill by batch size and mean prompt tokens per
// request, shaped where the prompts differ from the grid's (prefillLookup), each decode step by
// batch size and the mean context at that step, plus the batch's tail,
// for the first batch after a load the measured extra, the extra after idle GPUs, and prefill's
// extra on GPUs that have worked past the power model's heat time. A model with a fixed_batch_time, or
// without an entry for its preset and layout, falls back to the roofline.
class ProfiledCostModel final : public CostModel {
 public:
  ProfiledCostModel(const ClusterSpec& cluster, std::shared_ptr<const Profile> profile)
      : profile_(std::move(profile)), roofline_(cluster) {}
  BatchTimes batchTimes(const ModelDeployment& model, const std::vector<Request>& requests,
                        bool first_after_load = false, Nanos idle = 0, Nanos busy = 0) const override;
  StepTime prefillStep(const ModelDeployment& model, const std::vector<std::int32_t>& contexts,
                       bool first_after_load = false, Nanos idle = 0, Nanos busy = 0) const override;
  StepTime decodeStep(const ModelDeployment& model, int batch, double total_context) const override;
  std::string sourceFor(const ModelDeployment& model) const override;
  std::string prefillShapeFor(const ModelDeployment& model) const override;
  Nanos powerRecover(const ModelDeployment& model) const override;
  Nanos decodeGraphCapture(const ModelDeployment& model, int batch) const override;
  bool tracksDecodeGraphs(const ModelDeployment& model) const override;

 private:
  const ModelProfile* entryFor(const ModelDeployment& model) const;
  // Prefill of sequences of these prompt lengths: the grid at (their number, their mean prompt
  // clamped to the grid's longest), times the shape's ratio between these prompts and that many
  // uniform prompts of the clamped length. The shape is the one fitted to the grid
  // (ModelProfile::prefill_shape: time per token and per attention pair, as measured), else the
  // roofline's. So a batch of equal prompts within the grid takes the grid's time exactly; mixed
  // lengths add their attention's excess over the mean's; prompts past the grid grow as the shape
  // does (attention quadratic), not along the grid's last segment.
  ProfileGrid::Lookup prefillLookup(const ModelDeployment& model, const ModelProfile& entry,
                                    const std::vector<double>& prompts) const;
  std::shared_ptr<const Profile> profile_;
  RooflineCostModel roofline_;
};

}  // namespace computron
