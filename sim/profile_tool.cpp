#include "sim/profile_tool.h"

#include <boost/program_options.hpp>

#include <algorithm>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <set>
#include <sstream>

#include "common/json_reader.h"
#include "common/scenario/cli_args.h"
#include "common/scenario/output_files.h"
#include "common/types.h"

namespace computron::sim {

namespace {

std::string layoutLabel(int tp, int pp) { return std::to_string(tp) + "x" + std::to_string(pp); }

std::string entryLabel(const nlohmann::json& entry) {
  return entry.at("spec").get<std::string>() + " " + layoutLabel(entry.at("tp").get<int>(), entry.at("pp").get<int>());
}

bool sameEntry(const nlohmann::json& a, const nlohmann::json& b) {
  return a.at("spec") == b.at("spec") && a.at("tp") == b.at("tp") && a.at("pp") == b.at("pp");
}

std::string fixed(double v, int digits) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << v;
  return s.str();
}

// "1-64 (7)": an axis's first and last point and how many points it has.
std::string axisRange(const std::vector<double>& axis) {
  if (axis.empty()) return "-";
  std::ostringstream s;
  s << fixed(axis.front(), 0);
  if (axis.size() > 1) s << "-" << fixed(axis.back(), 0);
  s << " (" << axis.size() << ")";
  return s.str();
}

std::string provenanceString(const nlohmann::json& provenance, const char* key) {
  auto it = provenance.find(key);
  if (it == provenance.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  return it->dump();
}

}  // namespace

const std::vector<std::string>& profileEntryMembers() {
  static const std::vector<std::string> members = {"prefill", "decode",          "batch_tail_ms", "first_batch_extra_ms",
                                                   "idle",    "decode_graph_ms", "power"};
  return members;
}

nlohmann::json mergeProfiles(const nlohmann::json& base, const std::string& base_name,
                             const std::vector<std::pair<std::string, nlohmann::json>>& additions,
                             const ProfileMergeOptions& options) {
  readProfile(base, base_name);  // refuses a malformed base, naming its JSON path
  for (const std::string& member : options.only) {
    const auto& known = profileEntryMembers();
    if (std::find(known.begin(), known.end(), member) == known.end()) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      throw ConfigError("--only: \"" + member + "\" is not a member of a profile's model entry (members: " + list + ")");
    }
  }
  nlohmann::json merged = base;
  bool took_links = false;
  for (const auto& [name, doc] : additions) {
    readProfile(doc, name);
    nlohmann::json taken = nlohmann::json::array();
    const nlohmann::json& models = doc.at("models");
    for (std::size_t i = 0; i < models.size(); ++i) {
      const nlohmann::json& entry = models[i];
      nlohmann::json* target = nullptr;
      for (auto& existing : merged["models"])
        if (sameEntry(existing, entry)) target = &existing;
      if (options.only.empty()) {
        if (target != nullptr)
          *target = entry;
        else
          merged["models"].push_back(entry);
      } else {
        if (target == nullptr)
          throw ConfigError(name + ": $.models[" + std::to_string(i) + "]: " + entryLabel(entry) + " has no entry in " +
                            base_name + " to take --only members into (merge it whole first)");
        for (const std::string& member : options.only) {
          if (entry.contains(member))
            (*target)[member] = entry.at(member);
          else
            target->erase(member);
        }
      }
      taken.push_back(entryLabel(entry));
    }
    nlohmann::json run = {{"merged_from", std::filesystem::path(name).filename().string()}, {"entries", taken}};
    if (options.only.empty())
      run["members"] = "all";
    else
      run["members"] = options.only;
    if (options.links && (doc.contains("links") || doc.contains("realtime"))) {
      for (const char* key : {"links", "realtime"}) {
        if (doc.contains(key))
          merged[key] = doc.at(key);
        else
          merged.erase(key);
      }
      run["links"] = true;
      took_links = true;
    }
    const nlohmann::json& provenance = doc.at("provenance");
    for (const char* key : {"date", "seconds", "gpu", "gpu_count", "driver", "cuda_runtime", "build", "command", "runs"})
      if (provenance.contains(key)) run[key] = provenance.at(key);
    nlohmann::json& runs = merged["provenance"]["runs"];
    if (!runs.is_array()) runs = nlohmann::json::array();
    runs.push_back(std::move(run));
  }
  if (options.links && !took_links) throw ConfigError("--links: none of the profiles merged in has links or realtime figures");
  readProfile(merged, base_name + " (merged)");
  return merged;
}

std::string describeProfile(const Profile& profile) {
  std::ostringstream out;
  const nlohmann::json& prov = profile.provenance;
  out << "profile " << profile.path << ": ";
  const std::string gpu = provenanceString(prov, "gpu");
  out << (gpu.empty() ? "GPU not named" : gpu);
  if (prov.contains("gpu_count")) out << " x" << provenanceString(prov, "gpu_count");
  if (prov.contains("driver")) out << ", driver " << provenanceString(prov, "driver");
  out << ", " << provenanceString(prov, "date");
  if (prov.contains("runs") && prov.at("runs").is_array())
    out << ", " << prov.at("runs").size() << (prov.at("runs").size() == 1 ? " run" : " runs") << " merged in";
  out << "\n";
  const LinkProfile& l = profile.links;
  if (l.host_link_gbps || l.nvlink_gbps || l.evict_us || l.loads_in_order) {
    out << "links:";
    if (l.host_link_gbps) out << " host link " << fixed(*l.host_link_gbps, 1) << " GB/s";
    if (l.host_link_latency_us) out << " + " << fixed(*l.host_link_latency_us, 1) << " us";
    if (l.shared_host_gbps) out << ", two GPUs together " << fixed(*l.shared_host_gbps, 1) << " GB/s";
    if (l.nvlink_gbps) out << ", NVLink " << fixed(*l.nvlink_gbps, 1) << " GB/s";
    if (l.evict_us) out << ", eviction " << fixed(*l.evict_us, 1) << " us";
    if (l.loads_in_order) out << ", loads onto one GPU " << (*l.loads_in_order ? "in order" : "shared");
    out << "\n";
  } else {
    out << "links: none (the cluster preset's)\n";
  }
  out << "realtime: the driver wakes " << fixed(profile.wake_ms, 3) << " ms late\n\n";
  out << std::left << std::setw(14) << "model" << std::setw(8) << "layout" << std::setw(26) << "prefill batch x prompt"
      << std::setw(26) << "decode batch x context" << std::setw(14) << "power" << std::setw(18) << "decode graph ms"
      << "tail ms\n";
  for (const ModelProfile& m : profile.models) {
    std::string power = "-";
    if (m.power.hot_factor > 1) power = fixed(m.power.hot_factor, 3) + "x";
    std::string graph = "-";
    if (!m.decode_graph_ms.empty()) {
      const auto [lo, hi] = std::minmax_element(m.decode_graph_ms.begin(), m.decode_graph_ms.end());
      graph = *lo == *hi ? fixed(*lo, 2) : fixed(*lo, 2) + "-" + fixed(*hi, 2);
    }
    out << std::left << std::setw(14) << m.spec << std::setw(8) << layoutLabel(m.tp, m.pp) << std::setw(26)
        << (axisRange(m.prefill.batch) + " x " + axisRange(m.prefill.tokens)) << std::setw(26)
        << (axisRange(m.decode.batch) + " x " + axisRange(m.decode.tokens)) << std::setw(14) << power << std::setw(18)
        << graph << fixed(m.batch_tail_ms, 3) << "\n";
  }
  return out.str();
}

namespace {

int showMain(int argc, char** argv) {
  namespace po = boost::program_options;
  const std::string command = "computron profile show";
  std::string path;
  po::options_description opts("computron profile show PROFILE.json");
  opts.add_options()("help,h", "show this help")("json", po::bool_switch(), "print the profile's provenance as JSON instead");
  const std::string footer =
      "\nLists what a profile covers: the GPU, driver and date it was measured on, its link figures, and per model\n"
      "entry (preset and TPxPP layout) the ranges of its prefill and decode grids (first-last point, and how many),\n"
      "its power model, decode-graph capture times and batch tail. A model or layout it does not list is timed by\n"
      "the roofline. Exit 2 on a malformed profile, naming the JSON path.\n";
  po::variables_map vm;
  if (auto code = parseCommandArgs(argc, argv, opts, command, footer, {{"profile", &path, "a profile file is needed"}}, vm))
    return *code;
  try {
    const Profile profile = readProfileFile(path);
    if (vm["json"].as<bool>())
      std::cout << profile.provenance.dump(2) << "\n";
    else
      std::cout << describeProfile(profile);
  } catch (const ConfigError& e) {
    std::cerr << command << ": " << e.what() << "\n";
    return 2;
  }
  return 0;
}

int mergeMain(int argc, char** argv) {
  namespace po = boost::program_options;
  const std::string command = "computron profile merge";
  std::string base_path, out_path, only;
  std::vector<std::string> additions;
  po::options_description opts("computron profile merge BASE.json NEW.json [NEW2.json ...] -o OUT.json");
  opts.add_options()("help,h", "show this help")("out,o", po::value<std::string>(&out_path),
                                                 "the merged profile (required; may be BASE itself)")(
      "only", po::value<std::string>(&only),
      "copy only these members of each entry, comma separated (prefill, decode, batch_tail_ms, first_batch_extra_ms, "
      "idle, decode_graph_ms, power); the base must hold the entry")(
      "links", po::bool_switch(), "also take `links` and `realtime` from the new profiles that have them");
  po::options_description hidden;
  hidden.add_options()("base", po::value<std::string>(&base_path))("new", po::value<std::vector<std::string>>(&additions));
  po::positional_options_description pos;
  pos.add("base", 1).add("new", -1);
  const std::string footer =
      "\nMerges profiles written by `computron calibrate` into BASE, in order. Each model entry of a new profile\n"
      "replaces BASE's entry of the same preset and TPxPP layout, or is added; with --only, just the named\n"
      "members are copied (e.g. --only power from a separate --power-probe run). Each new profile is recorded in\n"
      "BASE's provenance.runs (its file name, the entries and members taken, its date, GPU, driver, build and\n"
      "command). Every file is validated, and the result before it is written (whole: a temporary file renamed\n"
      "into place). Exit 2 on bad usage or input, naming the file and JSON path.\n";
  po::options_description all;
  all.add(opts).add(hidden);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(all).positional(pos).run(), vm);
    if (vm.count("help")) {
      std::cout << opts << footer;
      return 0;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    return usageError(command, e.what(), opts);
  }
  if (base_path.empty() || additions.empty()) return usageError(command, "a base profile and at least one more are needed", opts);
  if (out_path.empty()) return usageError(command, "--out is required (it may name BASE itself)", opts);
  ProfileMergeOptions options;
  options.links = vm["links"].as<bool>();
  for (std::size_t start = 0; start < only.size();) {
    std::size_t comma = only.find(',', start);
    if (comma == std::string::npos) comma = only.size();
    if (comma > start) options.only.push_back(only.substr(start, comma - start));
    start = comma + 1;
  }
  try {
    checkOutputFilePath(out_path, "--out");
    const nlohmann::json base = readJsonFile(base_path);
    std::vector<std::pair<std::string, nlohmann::json>> docs;
    for (const std::string& p : additions) docs.emplace_back(p, readJsonFile(p));
    const nlohmann::json merged = mergeProfiles(base, base_path, docs, options);
    writeFileWhole(out_path, [&](std::ostream& out) { out << merged.dump(1) << "\n"; });
    std::cout << describeProfile(readProfile(merged, out_path));
  } catch (const ConfigError& e) {
    std::cerr << command << ": " << e.what() << "\n";
    return 2;
  } catch (const OutputError& e) {
    std::cerr << command << ": " << e.what() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace

int profileMain(int argc, char** argv) {
  const std::string usage =
      "usage: computron profile show PROFILE.json\n"
      "       computron profile merge BASE.json NEW.json [NEW2.json ...] -o OUT.json [--only MEMBERS] [--links]\n"
      "Run 'computron profile <show|merge> --help' for the options. Profiles: docs/specs.md, \"Profiles\".\n";
  if (argc < 2) {
    std::cerr << "computron profile: a subcommand is needed\n" << usage;
    return 2;
  }
  const std::string sub = argv[1];
  if (sub == "--help" || sub == "-h" || sub == "help") {
    std::cout << usage;
    return 0;
  }
  if (sub == "show") return showMain(argc - 1, argv + 1);
  if (sub == "merge") return mergeMain(argc - 1, argv + 1);
  std::cerr << "computron profile: unknown subcommand '" << sub << "'\n" << usage;
  return 2;
}

}  // namespace computron::sim
