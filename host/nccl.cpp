// Loading NCCL at run time and choosing the path of a run's sums
// (host/nccl.hpp); the GPU side is kernels/nccl_sum.cu.
#include "nccl.hpp"

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include "gradnoise/error.hpp"

namespace gradnoise::detail {
namespace {

/// The symbol `name` of `handle` as `Fn`; false, with `problem` set, when absent.
template <class Fn>
bool resolve(void* handle, const char* name, const std::string& path, Fn& fn, std::string& problem) {
  fn = reinterpret_cast<Fn>(dlsym(handle, name));
  if (fn != nullptr) return true;
  problem = path + " does not export " + name + ", which gradnoise needs (NCCL 2.7 or later)";
  return false;
}

}  // namespace

bool open_nccl(const std::string& path, NcclLibrary& library, std::string& problem) {
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    problem = "cannot load NCCL from " + path + " (" + (why != nullptr ? why : "dlopen failed") + ")";
    return false;
  }
  library.path = path;
  const bool resolved =
      resolve(handle, "ncclGetVersion", path, library.get_version, problem) &&
      resolve(handle, "ncclGetErrorString", path, library.get_error_string, problem) &&
      resolve(handle, "ncclGetUniqueId", path, library.get_unique_id, problem) &&
      resolve(handle, "ncclCommInitRank", path, library.comm_init_rank, problem) &&
      resolve(handle, "ncclCommDestroy", path, library.comm_destroy, problem) &&
      resolve(handle, "ncclSend", path, library.send, problem) &&
      resolve(handle, "ncclRecv", path, library.recv, problem) &&
      resolve(handle, "ncclBroadcast", path, library.broadcast, problem);
  if (!resolved) {
    dlclose(handle);
    return false;
  }
  if (library.get_version(&library.version) != nccl_abi::kSuccess) library.version = 0;
  return true;
}

void check_nccl(const NcclLibrary& library, nccl_abi::Result result, const char* call) {
  if (result == nccl_abi::kSuccess) return;
  throw RuntimeError(std::string("NCCL's ") + call + " failed: " + library.get_error_string(result) +
                     " (ncclResult_t " + std::to_string(result) + ", " + library.path + ")");
}

const NcclLibrary* load_nccl(std::string& problem) {
  const char* named = std::getenv("GRADNOISE_NCCL");
  const bool from_env = named != nullptr && *named != '\0';
  const std::string path = from_env ? named : "libnccl.so.2";
  // Once per process and path: thread ranks share it; it is never closed.
  struct Loaded {
    NcclLibrary library;
    std::string problem;
    bool ok = false;
  };
  static std::mutex mutex;
  static std::map<std::string, Loaded> loaded;
  std::lock_guard lock(mutex);
  auto [at, fresh] = loaded.try_emplace(path);
  Loaded& entry = at->second;
  if (fresh) {
    entry.ok = open_nccl(path, entry.library, entry.problem);
    if (!entry.ok && from_env) entry.problem += " (set by GRADNOISE_NCCL)";
  }
  if (!entry.ok) problem = entry.problem;
  return entry.ok ? &entry.library : nullptr;
}

Reduction parse_reduction(const std::string& name) {
  if (name == "auto") return Reduction::automatic;
  if (name == "host") return Reduction::host;
  if (name == "nccl") return Reduction::nccl;
  throw InputError("--reduction must be auto, host or nccl, not '" + name + "'.");
}

std::unique_ptr<DeviceSum> make_device_sum(Communicator& comm, bool gpu_engine, Reduction choice) {
  // `choice` comes from the command line: the same on every rank.
  if (choice == Reduction::host) return nullptr;
  if (comm.size() < 2) {
    if (choice == Reduction::nccl) {
      throw InputError("--reduction nccl sums over ranks, and this run has one; start it under "
                       "mpirun or with --devices, or drop --reduction.");
    }
    return nullptr;
  }
  std::string problem;
  const NcclLibrary* library = nullptr;
  if (!gpu_engine) {
    problem = "this rank's engine is the CPU, and NCCL sums GPU buffers";
  } else {
    library = load_nccl(problem);
  }
  if (comm.max(problem.empty() ? 0 : 1) != 0) {
    // Some rank cannot: the host path, or (asked for NCCL) the lowest such
    // rank's reason on every rank.
    if (choice == Reduction::nccl) {
      comm.together([&] {
        if (!problem.empty()) throw InputError("--reduction nccl: " + problem + "; use --reduction auto or host.");
      });
    }
    return nullptr;
  }
  nccl_abi::UniqueId id{};
  std::string id_bytes;
  comm.together([&] {
    if (comm.rank() != 0) return;
    check_nccl(*library, library->get_unique_id(&id), "ncclGetUniqueId");
    id_bytes.assign(id.internal, sizeof id.internal);
  });
  comm.broadcast(id_bytes, 0);
  std::memcpy(id.internal, id_bytes.data(), sizeof id.internal);
  // ncclCommInitRank waits for every rank: a rank that fails in it may
  // leave the others there (NCCL's own limit; docs/MPI.md).
  return comm.together([&] { return make_nccl_sum(*library, id, comm); });
}

}  // namespace gradnoise::detail
