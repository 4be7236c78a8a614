// Command-line parsing shared by every subcommand (`computron sim`, `sweep`, `presets`, `replay`,
// `bench swap`): Boost.Program_options with one way to fail. A bad option or value exits with code
// 2 and a message naming the option; --help prints the usage and exits 0.
#pragma once

#include <boost/program_options.hpp>

#include <iostream>
#include <optional>
#include <string>
#include <vector>

namespace computron {

// A positional argument, stored into `*value`; required when `missing` (the message when it is
// absent) is not empty.
struct PositionalArg {
  std::string key;  // its name among the options ("scenario")
  std::string* value;
  std::string missing;  // "a sweep file is needed"
};

// Parses argv (argv[0] is the subcommand) against `opts` (which should declare "help,h") plus
// `positionals`, in order, and with `rest` every positional argument after them (`computron
// profile merge BASE NEW...`; without it, extra positionals are a usage error). Returns the exit
// code when the command ends here: 2 after a usage error (printed to stderr with `command` and
// the options), 0 after --help (the options, then `help_footer`, on stdout); std::nullopt when
// the command goes on.
inline std::optional<int> parseCommandArgs(int argc, char** argv, const boost::program_options::options_description& opts,
                                           const std::string& command, const std::string& help_footer,
                                           const std::vector<PositionalArg>& positionals,
                                           boost::program_options::variables_map& vm,
                                           std::vector<std::string>* rest = nullptr) {
  namespace po = boost::program_options;
  po::options_description hidden;
  po::positional_options_description pos;
  for (const PositionalArg& p : positionals) {
    hidden.add_options()(p.key.c_str(), po::value<std::string>(p.value));
    pos.add(p.key.c_str(), 1);
  }
  if (rest != nullptr) {
    hidden.add_options()("rest-of-positionals", po::value<std::vector<std::string>>(rest));
    pos.add("rest-of-positionals", -1);
  }
  po::options_description all;
  all.add(opts).add(hidden);
  try {
    po::store(po::command_line_parser(argc, argv).options(all).positional(pos).run(), vm);
    if (vm.count("help")) {
      std::cout << opts << help_footer;
      return 0;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << command << ": " << e.what() << "\n\n" << opts;
    return 2;
  }
  for (const PositionalArg& p : positionals) {
    if (!p.missing.empty() && p.value->empty()) {
      std::cerr << command << ": " << p.missing << "\n\n" << opts;
      return 2;
    }
  }
  return std::nullopt;
}

// A usage error found after parsing (a value out of range): the message, the options, code 2.
inline int usageError(const std::string& command, const std::string& message,
                      const boost::program_options::options_description& opts) {
  std::cerr << command << ": " << message << "\n\n" << opts;
  return 2;
}

// The commands that take one optional scenario file (`computron sim`, `computron replay`).
inline std::optional<int> parseScenarioArgs(int argc, char** argv, const boost::program_options::options_description& opts,
                                            const std::string& command, const std::string& help_footer,
                                            std::string& scenario_path, boost::program_options::variables_map& vm) {
  return parseCommandArgs(argc, argv, opts, command, help_footer, {{"scenario", &scenario_path, ""}}, vm);
}

}  // namespace computron
