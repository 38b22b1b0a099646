// NCCL for the GPU-to-GPU sums of a run over ranks (docs/MPI.md "GPUs and
// NCCL"), loaded at run time: libnccl is ~220 MB and the GPU machines get a
// small packed copy of the build, so gradnoise never links it. dlopen finds
// $GRADNOISE_NCCL when set (a path, e.g. PyTorch's bundled copy), else
// "libnccl.so.2" on the loader's path, and resolves the few entry points
// below. Plain C++: the NCCL types we pass are declared here (their ABI has
// been stable since NCCL 2.7), so the loader and its failure paths compile
// and are tested in every build; kernels/nccl_sum.cu checks them against
// nccl.h where the toolkit has it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "comm.hpp"

struct CUstream_st;  // cudaStream_t
struct ncclComm;     // ncclComm_t is ncclComm*

namespace gradnoise::detail {

/// The NCCL ABI gradnoise uses: ncclResult_t (0 is success),
/// ncclDataType_t's ncclFloat64, ncclUniqueId.
namespace nccl_abi {
using Result = int;
constexpr Result kSuccess = 0;
constexpr int kFloat64 = 8;
constexpr std::size_t kUniqueIdBytes = 128;
struct UniqueId {
  char internal[kUniqueIdBytes];
};
}  // namespace nccl_abi

/// The entry points resolved from one libnccl.
struct NcclLibrary {
  std::string path;  // what dlopen was given
  int version = 0;   // ncclGetVersion: 22809 for 2.28.9
  nccl_abi::Result (*get_version)(int*) = nullptr;
  const char* (*get_error_string)(nccl_abi::Result) = nullptr;
  nccl_abi::Result (*get_unique_id)(nccl_abi::UniqueId*) = nullptr;
  nccl_abi::Result (*comm_init_rank)(ncclComm**, int, nccl_abi::UniqueId, int) = nullptr;
  nccl_abi::Result (*comm_destroy)(ncclComm*) = nullptr;
  nccl_abi::Result (*send)(const void*, std::size_t, int, int, ncclComm*, CUstream_st*) = nullptr;
  nccl_abi::Result (*recv)(void*, std::size_t, int, int, ncclComm*, CUstream_st*) = nullptr;
  nccl_abi::Result (*broadcast)(const void*, void*, std::size_t, int, int, ncclComm*, CUstream_st*) = nullptr;
};

/// Opens `path` and resolves every entry point. On failure returns false and
/// `problem` says why in one sentence naming `path` (kept open otherwise;
/// the library is never closed).
bool open_nccl(const std::string& path, NcclLibrary& library, std::string& problem);

/// Throws RuntimeError naming `call` and NCCL's own text unless `result` is success.
void check_nccl(const NcclLibrary& library, nccl_abi::Result result, const char* call);

/// $GRADNOISE_NCCL or "libnccl.so.2", opened once per process; null, with
/// `problem` set, when it cannot be.
const NcclLibrary* load_nccl(std::string& problem);

/// How a run over ranks sums its P×c blocks (Σ·V, H·V): `automatic` through
/// NCCL when every rank's engine is a GPU and NCCL loads, else on the host;
/// `host` always through the communicator (MPI or the thread mailboxes);
/// `nccl` through NCCL or a one-sentence error saying why not.
enum class Reduction { automatic, host, nccl };

/// "auto", "host" or "nccl"; InputError otherwise.
Reduction parse_reduction(const std::string& name);

/// A sum over the ranks' GPUs: the blocks go GPU to GPU over the tree of
/// core/tree.hpp, each merge one device addition, so the result has the
/// bits of Communicator::sum on the same values.
class DeviceSum {
 public:
  virtual ~DeviceSum() = default;
  /// values[0..count) (host memory) ← their sum over the ranks.
  virtual void sum(double* values, std::size_t count) = 0;
};

/// Collective (every rank calls it, outside together()): the rank's NCCL
/// sum, or null for the host path. `gpu_engine`: this rank's engine is a
/// GPU (the current device). Throws, every rank the same message, when
/// `choice` is nccl and some rank cannot use it, or NCCL fails to start.
std::unique_ptr<DeviceSum> make_device_sum(Communicator& comm, bool gpu_engine, Reduction choice);

/// The GPU side (kernels/nccl_sum.cu; host/cuda_stub.cpp says the build has
/// no CUDA): rank `rank` of `ranks` of the NCCL communicator `id` names, on
/// the current device. Bytes sent and received are counted on `comm`.
std::unique_ptr<DeviceSum> make_nccl_sum(const NcclLibrary& library, const nccl_abi::UniqueId& id,
                                         Communicator& comm);

}  // namespace gradnoise::detail
