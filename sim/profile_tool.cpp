#include "sim/profile_tool.h"

#include <boost/program_options.hpp>

#include <iostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "common/json_reader.h"
#include "common/profile_merge.h"
#include "common/scenario/cli_args.h"
#include "common/scenario/output_files.h"
#include "common/types.h"

namespace computron::sim {

namespace {

// A subcommand's work after its arguments are parsed: bad input (ConfigError) prints
// `command: message` and gives exit code 2, a failed write (OutputError) 1.
template <typename Work>
int reportingErrors(const std::string& command, Work&& work) {
  try {
    return work();
  } catch (const ConfigError& e) {
    std::cerr << command << ": " << e.what() << "\n";
    return 2;
  } catch (const OutputError& e) {
    std::cerr << command << ": " << e.what() << "\n";
    return 1;
  }
}

int showMain(int argc, char** argv) {
  namespace po = boost::program_options;
  const std::string command = "computron profile show";
  std::string path, at;
  int batch = 1, tokens = 256;
  po::options_description opts("computron profile show PROFILE.json [--at MODEL[:TPxPP] --batch B --tokens T]");
  opts.add_options()("help,h", "show this help")("json", po::bool_switch(), "print the profile's provenance as JSON instead")(
      "at", po::value<std::string>(&at), "look up one entry's times (a model preset, layout 1x1 unless given: opt-13b:2x1)")(
      "batch", po::value<int>(&batch)->default_value(1), "with --at: the batch size")(
      "tokens", po::value<int>(&tokens)->default_value(256), "with --at: prompt tokens (prefill) and context (decode)");
  const std::string footer =
      "\nLists what a profile covers: the GPU, driver and date it was measured on, its link figures, and per model\n"
      "entry (preset and TPxPP layout) the ranges of its prefill and decode grids (first-last point, and how many),\n"
      "its power model, decode-graph capture times and batch tail. A model or layout it does not list is timed by\n"
      "the roofline. With --at, the times one entry gives one shape, as the simulator looks them up (a measured\n"
      "point, interpolated, or extrapolated outside the grid). Exit 2 on a malformed profile, naming the JSON path,\n"
      "or an entry the profile lacks.\n";
  po::variables_map vm;
  if (auto code = parseCommandArgs(argc, argv, opts, command, footer, {{"profile", &path, "a profile file is needed"}}, vm))
    return *code;
  return reportingErrors(command, [&] {
    const Profile profile = readProfileFile(path);
    if (!at.empty()) {
      if (batch < 1 || tokens < 1) return usageError(command, "--batch and --tokens must be at least 1", opts);
      const std::size_t colon = at.find(':');
      const std::string spec = at.substr(0, colon);
      int tp = 1, pp = 1;
      if (colon != std::string::npos) {
        const std::string layout = at.substr(colon + 1);
        char x = 0, extra = 0;
        std::istringstream in(layout);
        if (!(in >> tp >> x >> pp) || x != 'x' || tp < 1 || pp < 1 || (in >> extra))
          return usageError(command, "--at: \"" + layout + "\" is not a layout (TPxPP, e.g. 2x1)", opts);
      }
      const ModelProfile* entry = profile.find(spec, tp, pp);
      if (entry == nullptr) {
        std::string entries;
        for (const ModelProfile& m : profile.models)
          entries += (entries.empty() ? "" : ", ") + m.spec + ":" + std::to_string(m.tp) + "x" + std::to_string(m.pp);
        std::cerr << command << ": " << path << " has no entry for " << spec << " at " << tp << "x" << pp
                  << " (the roofline would time it); entries: " << entries << "\n";
        return 2;
      }
      std::cout << describeLookup(*entry, batch, tokens);
    } else if (vm["json"].as<bool>()) {
      std::cout << profile.provenance.dump(2) << "\n";
    } else {
      std::cout << describeProfile(profile);
    }
    return 0;
  });
}

int diffMain(int argc, char** argv) {
  namespace po = boost::program_options;
  const std::string command = "computron profile diff";
  std::string old_path, new_path;
  po::options_description opts("computron profile diff OLD.json NEW.json");
  opts.add_options()("help,h", "show this help");
  const std::string footer =
      "\nCompares two profiles at the grid points they share, per model entry both hold (same preset and TPxPP\n"
      "layout): the smallest, median and largest ratio NEW / OLD of prefill and of decode times, and how many points\n"
      "were compared (e.g. a recalibration against the shipped profile: a ratio under 1 is faster now). Entries in\n"
      "one profile only are listed. Exit 2 on a malformed profile, naming the JSON path.\n";
  po::variables_map vm;
  if (auto code = parseCommandArgs(argc, argv, opts, command, footer,
                                   {{"old", &old_path, "two profiles are needed: computron profile diff OLD NEW"},
                                    {"new", &new_path, "two profiles are needed: computron profile diff OLD NEW"}},
                                   vm))
    return *code;
  return reportingErrors(command, [&] {
    const Profile old_profile = readProfileFile(old_path);
    const Profile new_profile = readProfileFile(new_path);
    std::cout << describeDiff(diffProfiles(old_profile, new_profile), old_path, new_path);
    return 0;
  });
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
  const std::string footer =
      "\nMerges profiles written by `computron calibrate` into BASE, in order. Each model entry of a new profile\n"
      "replaces BASE's entry of the same preset and TPxPP layout, or is added; with --only, just the named\n"
      "members are copied (e.g. --only power from a separate --power-probe run). Each new profile is recorded in\n"
      "BASE's provenance.runs (its file name, the entries and members taken, its date, GPU, driver, build and\n"
      "command). Every file is validated, and the result before it is written (whole: a temporary file renamed\n"
      "into place). Exit 2 on bad usage or input, naming the file and JSON path.\n";
  po::variables_map vm;
  if (auto code = parseCommandArgs(argc, argv, opts, command, footer,
                                   {{"base", &base_path, "a base profile and at least one more are needed"}}, vm, &additions))
    return *code;
  if (additions.empty()) return usageError(command, "a base profile and at least one more are needed", opts);
  if (out_path.empty()) return usageError(command, "--out is required (it may name BASE itself)", opts);
  ProfileMergeOptions options;
  options.links = vm["links"].as<bool>();
  for (std::size_t start = 0; start < only.size();) {
    std::size_t comma = only.find(',', start);
    if (comma == std::string::npos) comma = only.size();
    if (comma > start) options.only.push_back(only.substr(start, comma - start));
    start = comma + 1;
  }
  return reportingErrors(command, [&] {
    checkOutputFilePath(out_path, "--out");
    const nlohmann::json base = readJsonFile(base_path);
    std::vector<std::pair<std::string, nlohmann::json>> docs;
    for (const std::string& p : additions) docs.emplace_back(p, readJsonFile(p));
    const nlohmann::json merged = mergeProfiles(base, base_path, docs, options);
    writeFileWhole(out_path, [&](std::ostream& out) { out << merged.dump(1) << "\n"; });
    std::cout << describeProfile(readProfile(merged, out_path));
    return 0;
  });
}

}  // namespace

int profileMain(int argc, char** argv) {
  const std::string usage =
      "usage: computron profile show PROFILE.json [--at MODEL[:TPxPP] --batch B --tokens T]\n"
      "       computron profile merge BASE.json NEW.json [NEW2.json ...] -o OUT.json [--only MEMBERS] [--links]\n"
      "       computron profile diff OLD.json NEW.json\n"
      "Run 'computron profile <show|merge|diff> --help' for the options. Profiles: docs/specs.md, \"Profiles\".\n";
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
  if (sub == "diff") return diffMain(argc - 1, argv + 1);
  std::cerr << "computron profile: unknown subcommand '" << sub << "'\n" << usage;
  return 2;
}

}  // namespace computron::sim
