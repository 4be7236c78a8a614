// A measured profile of batch, decode and load times (docs/specs.md, "Profiles"), written by
// `computron calibrate` on GPUs and read by the simulator's profiled cost model. Per model and
// (TP, PP) layout it holds two grids, each over batch size and a token count: prefill (time from
// the engine issuing a batch to its first token, by prompt tokens per request) and one decode step
// (by mean context per sequence), plus the realtime path's fixed costs. Optional link figures
// (host link bandwidth and latency, NVLink, eviction) replace the cluster preset's.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/json_reader.h"
#include "common/types.h"

namespace computron {

// Values over a grid of batch sizes (rows) and token counts (columns), in milliseconds.
// Lookups interpolate linearly along each axis (bilinear): exact at grid points, and between two
// neighbouring points within their values (monotone between them). Outside the grid, along each
// axis: below the first point the first value holds; above the last point the last segment's slope
// continues, never falling (a negative slope is taken as flat). A one-point axis is constant.
struct ProfileGrid {
  std::vector<double> batch;   // strictly increasing, >= 1
  std::vector<double> tokens;  // strictly increasing, >= 1
  std::vector<std::vector<double>> ms;  // [batch index][tokens index], finite, > 0

  struct Lookup {
    double ms = 0;
    bool outside = false;  // the shape fell outside the measured range on either axis
  };
  Lookup at(double batch_size, double token_count) const;
};

// Prefill time of a batch ~ per_token_ms x tokens + per_pair_ms x causal pairs (a prompt of P
// tokens has P(P+1)/2), from the prefill grid's largest batch: a least-squares line of the time per
// token against (P+1)/2 over its prompts of at least kPrefillShapeMinPrompt tokens (bound by
// compute, not by reading the weights). `measured` is false, and the roofline gives the shape,
// when that row has fewer than two such prompts, or its line falls (the row is not bound by compute
// there, so it cannot tell attention's cost) or is not positive.
struct PrefillShape {
  bool measured = false;
  double per_token_ms = 0;
  double per_pair_ms = 0;
  double ms(double tokens, double pairs) const { return per_token_ms * tokens + per_pair_ms * pairs; }
};
inline constexpr double kPrefillShapeMinPrompt = 256;
PrefillShape fitPrefillShape(const ProfileGrid& prefill);

struct ModelProfile {
  std::string spec;  // model preset name
  int tp = 1;
  int pp = 1;
  ProfileGrid prefill;  // tokens = prompt tokens per request
  ProfileGrid decode;   // tokens = mean context per sequence (prompt + tokens so far)
  double batch_tail_ms = 0;         // from a batch's last token to the engine seeing it end
  double first_batch_extra_ms = 0;  // added to the first batch after a model's load
  // Capturing one decode graph (optional `decode_graph_ms`: one figure for every batch size, or
  // `{"batch": [...], "ms": [...]}` by batch size, linear between points and flat outside; none:
  // 0). The runtime replays a graph per decode batch size, captured at its first use, and captures
  // again after the model's weights moved to another address. The simulator adds it to the first
  // decode step of each batch size since the model's shards last changed address (it places
  // shards as the runtime's pool does).
  std::vector<double> decode_graph_batch, decode_graph_ms;  // one point (batch 1) for a single figure
  double decodeGraphMs(int batch) const;
  // Extra time of a batch whose GPUs sat idle this long before it (measured points; none: 0).
  // Linear from (0, 0) through the points, flat after the last.
  std::vector<double> idle_gap_ms, idle_extra_ms;
  double idleExtraMs(double gap_ms) const;
  // The GPU's power limit (optional `power`, from `calibrate --power-probe`): after heat_ms of
  // continuous work prefill runs hot_factor times slower (its clock lowered) until the GPU runs no
  // prefill (idles or decodes) for recover_ms. The grids are timed after idle, so they hold heat_ms
  // of cool work at most.
  struct Power {
    double hot_factor = 1;  // >= 1; 1: no power model
    double heat_ms = 0;
    double recover_ms = 0;
  } power;
  // The extra prefill time of a batch or prefill step whose grid time is `grid_ms`, started after
  // `busy_ms` of continuous work (gaps under recover_ms with no prefill, idle or decoding, count as
  // work; longer ones end it): (min(grid, heat) - cool time left) x (hot_factor - 1), where cool
  // time left = max(0, heat_ms - busy_ms).
  double hotPrefillExtraMs(double grid_ms, double busy_ms) const;
  // How prefill time grows with the prompts, fitted to the prefill grid when read: per token
  // (products, norms) and per causal attention pair. The cost model scales the grid's time by this
  // shape where a batch's prompts differ in length, or run past the grid's longest.
  PrefillShape prefill_shape;
};

struct LinkProfile {
  std::optional<double> host_link_gbps;
  std::optional<double> host_link_latency_us;
  std::optional<double> nvlink_gbps;
  std::optional<double> evict_us;
  // Two GPUs of a node loading at once get this much together (less than twice one link): the
  // node's GPUs then share one uplink of this bandwidth, unless the cluster names uplinks itself.
  std::optional<double> shared_host_gbps;
  // Two direct loads issued at once onto one GPU ran one after the other (the runtime's load
  // stream), not sharing its link: the cluster's `host_loads_in_order`.
  std::optional<bool> loads_in_order;
};

struct Profile {
  std::string path;            // where it was read from (for messages)
  nlohmann::json provenance;   // as written by calibrate: GPU, driver, build, date, grid
  LinkProfile links;
  // The realtime driver wakes this long after a request's arrival time (it sleeps until then),
  // so the engine sees each request this much after it arrived.
  double wake_ms = 0;
  std::vector<ModelProfile> models;

  // The entry for this model preset and layout, or null.
  const ModelProfile* find(const std::string& spec, int tp, int pp) const;
};

// `calibrate --power-probe`'s measurements of one heavy prefill shape: run back to back for a few
// seconds after a long idle (seconds since the first started, ms each), then after idle gaps
// (gap ms, median ms of the runs after it, shortest gap first).
struct PowerProbe {
  std::vector<std::pair<double, double>> ramp;
  std::vector<std::pair<double, double>> after_gap;
};
// The profile's `power` member from a probe:
// - cool_ms: the run after the longest gap (rested); hot_ms: the median of the ramp from 0.5 s on;
//   hot_factor = hot_ms / cool_ms (at least 1);
// - heat_ms: when the ramp turned hot, from its first half second: its runs took T for K runs, and
//   cool work up to heat_ms then hot_factor times slower gives T = heat + (K cool - heat) hot_factor;
// - recover_ms: the shortest gap after which the shape ran at most halfway from cool to hot.
// With a hot_factor under 1.02 (no measurable limit) heat_ms and recover_ms are 0.
nlohmann::json powerFromProbe(const PowerProbe& probe);

// Reads and validates a profile document; errors are ConfigError naming `name` and the JSON path
// (`profile.json: $.models[0].prefill.batch[2]: ...`).
Profile readProfile(const nlohmann::json& doc, const std::string& name);
Profile readProfileFile(const std::string& path);

}  // namespace computron
