// Command-line parsing shared by the subcommands that take one scenario file (`computron sim`,
// `computron replay`).
#pragma once

#include <boost/program_options.hpp>

#include <iostream>
#include <optional>
#include <string>

namespace computron {

// Parses argv (argv[0] is the subcommand) against `opts` plus one optional positional SCENARIO,
// stored into `scenario_path`. Returns the exit code when the command ends here: 2 after a usage
// error (printed with `command` and the options), 0 after --help (the options, then
// `help_footer`); std::nullopt when the command goes on.
inline std::optional<int> parseScenarioArgs(int argc, char** argv, const boost::program_options::options_description& opts,
                                            const std::string& command, const std::string& help_footer,
                                            std::string& scenario_path, boost::program_options::variables_map& vm) {
  namespace po = boost::program_options;
  po::options_description hidden;
  hidden.add_options()("scenario", po::value<std::string>(&scenario_path));
  po::options_description all;
  all.add(opts).add(hidden);
  po::positional_options_description pos;
  pos.add("scenario", 1);
  try {
    po::store(po::command_line_parser(argc, argv).options(all).positional(pos).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << command << ": " << e.what() << "\n\n" << opts;
    return 2;
  }
  if (vm.count("help")) {
    std::cout << opts << help_footer;
    return 0;
  }
  return std::nullopt;
}

}  // namespace computron
