// Profiles gathered from several `computron calibrate` runs, and described (the pure part of
// `computron profile merge|show`, sim/profile_tool.h; docs/specs.md, "Profiles").
//
// A calibrate run writes one profile; the shipped profiles gather many (a model measured on one
// day, another model or a wider grid on the next, a power probe apart from the grids).
// mergeProfiles replaces or adds model entries of a base profile with those of newer runs, or
// copies only some members (power), and records each run in the base's provenance.runs. Every
// document is read with readProfile, so a malformed one is refused naming its JSON path, and the
// result is validated before it is returned.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/profile.h"

namespace computron {

struct ProfileMergeOptions {
  // Members of a model entry to copy (prefill, decode, batch_tail_ms, first_batch_extra_ms,
  // decode_graph_ms, idle, power); empty: whole entries, added when the base lacks them.
  std::vector<std::string> only;
  // Also take `links` and `realtime` from the additions that have them (the last one wins).
  bool links = false;
};

// The members `only` may name.
const std::vector<std::string>& profileEntryMembers();

// `base` with `additions` (file name, document) merged in, in order. A whole entry replaces the
// base's entry of the same (spec, tp, pp), or is appended; with `only`, the named members replace
// the base entry's (a member the addition lacks is removed from the base entry too, so the entry
// is what that run measured), and an entry the base lacks is an error. Each addition becomes one
// element of provenance.runs: its file's name, the entries and members taken, and its own
// provenance's date, seconds, GPU, driver, build, command and runs. Throws ConfigError naming the
// file and JSON path (a malformed document, an unknown member, no entry to update).
nlohmann::json mergeProfiles(const nlohmann::json& base, const std::string& base_name,
                             const std::vector<std::pair<std::string, nlohmann::json>>& additions,
                             const ProfileMergeOptions& options);

// A profile described in lines: provenance, links, and one line per model entry (layout, grid
// ranges, power, decode graphs, batch tail).
std::string describeProfile(const Profile& profile);

// The times an entry gives one shape, as the profiled cost model looks them up: prefill of
// `batch` prompts of `tokens` tokens each (with the most the power model adds after sustained
// work), a decode step of `batch` sequences at mean context `tokens`, and a decode graph's capture
// at `batch`; each says whether it is a measured point, interpolated, or outside the grid.
std::string describeLookup(const ModelProfile& entry, int batch, int tokens);

// Two profiles' times at the grid points they share, per entry both hold (same preset and
// layout): for prefill and for decode, how many points are shared and the smallest, median and
// largest ratio new / old (an entry with no shared point has count 0 and ratios 0).
struct GridRatios {
  int points = 0;
  double min = 0, median = 0, max = 0;
};
struct EntryDiff {
  std::string spec;
  int tp = 1, pp = 1;
  GridRatios prefill, decode;
};
struct ProfileDiff {
  std::vector<EntryDiff> shared;
  std::vector<std::string> only_old, only_new;  // "spec TPxPP"
};
ProfileDiff diffProfiles(const Profile& old_profile, const Profile& new_profile);
std::string describeDiff(const ProfileDiff& diff, const std::string& old_name, const std::string& new_name);

}  // namespace computron
