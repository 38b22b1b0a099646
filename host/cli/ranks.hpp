// Which ranks a command runs on: this process's own (one process, or a rank
// of an MPI job), or with --devices one thread rank per listed device in this
// process (docs/MPI.md "One process, several GPUs").
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "comm.hpp"

namespace gradnoise::cli {

/// --devices as parsed: GPU ordinals ("0,1,3") or CPU ranks ("cpu,cpu").
struct DeviceList {
  bool gpus = false;
  /// Rank r's GPU ordinal (its local_rank()), or r for CPU ranks.
  std::vector<int> local_ranks;
};

/// Parses --devices; InputError naming it and what was expected.
DeviceList parse_devices(const std::string& spec);

/// Runs `rank` on world() without --devices; with it, on one thread rank per
/// listed device, each with its GPU current, `device` (the --device value,
/// `device_given` when on the command line) set to cuda or cpu for them.
/// Refuses, in one sentence, a list that contradicts --device, GPUs this
/// build or machine does not have, and --devices under mpirun. Returns rank
/// 0's exit status.
int run_ranks(const std::string& devices, std::string& device, bool device_given,
              const std::function<int(detail::Communicator&)>& rank);

/// run_ranks for a command's parsed `args` (their devices, device and
/// device_option): rank(args, comm) on every rank, --device resolved.
template <class Args, class Rank>
int run_command_ranks(const Args& args, Rank&& rank) {
  Args own = args;
  const bool device_given = args.device_option != nullptr && args.device_option->count() > 0;
  return run_ranks(args.devices, own.device, device_given,
                   [&](detail::Communicator& comm) { return rank(own, comm); });
}

}  // namespace gradnoise::cli
