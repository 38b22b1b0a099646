// gradnoise: exact gradient-noise profiles from the command line.
// Exit status: 0 ok, 2 bad input or usage, 1 runtime failure. Every error is
// one line on stderr: "gradnoise: error: <sentence>".
#include <exception>
#include <filesystem>
#include <iostream>
#include <new>
#include <string>

#include "cli/cli.hpp"
#include "comm.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/cuda.hpp"
#include "gradnoise/report.hpp"

namespace {

constexpr int exit_ok = 0;
constexpr int exit_runtime = 1;
constexpr int exit_usage = 2;

/// Messages are printed on one line whatever they contain.
std::string one_line(std::string message) {
  for (char& c : message) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  while (!message.empty() && message.back() == ' ') message.pop_back();
  return message;
}

int print_failure(int status, const std::string& message) {
  std::cout.flush();
  std::cerr << "gradnoise: error: " << one_line(message) << std::endl;
  return status;
}

/// Under MPI (docs/MPI.md) a failure every rank agreed on is printed once, by
/// rank 0, and every rank exits with its status; a failure on one rank alone
/// (outside comm.together()) would leave the others waiting, so it ends the
/// whole job after printing. `every_rank`: the failure is the same on every
/// rank by construction (the command line).
int fail(int status, const std::string& message, bool every_rank = false) {
  gradnoise::detail::Communicator& comm = gradnoise::detail::world();
  if (comm.size() == 1) return print_failure(status, message);
  if (every_rank || comm.failure_agreed()) {
    return comm.rank() == 0 ? print_failure(status, message) : status;
  }
  print_failure(status, "rank " + std::to_string(comm.rank()) + " of " +
                            std::to_string(comm.size()) + ": " + message);
  comm.abort(status);
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace gradnoise::cli;

  CLI::App app{
      "gradnoise: exact gradient-noise profiles of linear, two-layer and deep linear models.\n"
      "Computes the mean gradient G, tr Sigma of the per-sample gradient covariance,\n"
      "per-layer and per-parameter statistics and the minibatch-gradient variance for\n"
      "every batch size, exactly, from per-sample gradients.",
      "gradnoise"};
  app.set_version_flag("--version",
                       std::string("gradnoise ") + gradnoise::version() +
                           (gradnoise::cuda_built() ? " (CUDA backend built)" : " (CPU only)"),
                       "Print the version and exit");
  app.require_subcommand(0, 1);

  ProfileArgs profile_args;
  SynthArgs synth_args;
  SweepArgs sweep_args;
  CLI::App* profile_command = add_profile_command(app, profile_args);
  CLI::App* synth_command = add_synth_command(app, synth_args);
  CLI::App* sweep_command = add_sweep_command(app, sweep_args);
  app.footer(
      "Examples:\n"
      "  gradnoise profile --dataset fashion-mnist --loss ce --out report.json --curve curve.csv\n"
      "  gradnoise synth --n 1000 --d 20 --x-out X.npy --y-out Y.npy\n"
      "  gradnoise sweep --x X.npy --y Y.npy --batch-sizes 1,8,64 --lrs 0.1,0.01 --replicas 16 \\\n"
      "      --steps 1000 --out runs.csv --summary summary.json\n"
      "  gradnoise profile --x X.npy --y Y.npy --init lstsq\n"
      "Run 'gradnoise <command> --help' for the options of each command.");

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& success) {
    return app.exit(success);  // --help, --version: printed to stdout, status 0
  } catch (const CLI::ParseError& error) {
    std::string hint = " (see gradnoise --help)";
    for (const CLI::App* command : {profile_command, synth_command, sweep_command}) {
      if (command->parsed()) hint = " (see gradnoise " + command->get_name() + " --help)";
    }
    return fail(exit_usage, std::string(error.what()) + hint, /*every_rank=*/true);
  }

  try {
    if (profile_command->parsed()) return run_profile(profile_args);
    if (synth_command->parsed()) return run_synth(synth_args);
    if (sweep_command->parsed()) return run_sweep(sweep_args);
    return fail(exit_usage,
                "a command is needed: 'profile', 'sweep' or 'synth' (see gradnoise --help).");
  } catch (const gradnoise::InputError& error) {
    return fail(exit_usage, error.what());
  } catch (const gradnoise::RuntimeError& error) {
    return fail(exit_runtime, error.what());
  } catch (const std::bad_alloc&) {
    return fail(exit_runtime, std::string("out of memory while ") + current_stage() +
                                  "; try fewer samples (--limit) or smaller --chunk-rows.");
  } catch (const std::filesystem::filesystem_error& error) {
    return fail(exit_runtime, error.what());
  } catch (const std::exception& error) {
    return fail(exit_runtime, std::string("unexpected failure while ") + current_stage() + ": " +
                                  error.what());
  }
  return exit_ok;
}
