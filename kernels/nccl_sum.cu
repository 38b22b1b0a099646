// The NCCL sum of a run over ranks (host/nccl.hpp): the rank's block is
// copied to its GPU and folded over the tree of core/tree.hpp with NCCL's
// point-to-point send and receive, each merge one elementwise addition on
// the device, then broadcast from rank 0 and copied back. The same operands
// meet in the same order as in Communicator::sum, and an IEEE addition is
// exact-rounded the same on host and device, so both paths give the same
// bits (docs/MPI.md). Not ncclAllReduce: its summation order is NCCL's
// choice (ring or tree, by size and topology) and not documented as fixed.
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "cuda_support.hpp"
#include "nccl.hpp"
#include "tree.hpp"

#if __has_include(<nccl.h>)
#include <nccl.h>
// host/nccl.hpp declares the ABI itself (no header needed to build); hold it
// to the toolkit's header where there is one.
static_assert(sizeof(ncclUniqueId) == sizeof(gradnoise::detail::nccl_abi::UniqueId));
static_assert(static_cast<int>(ncclFloat64) == gradnoise::detail::nccl_abi::kFloat64);
static_assert(static_cast<int>(ncclSuccess) == gradnoise::detail::nccl_abi::kSuccess);
static_assert(std::is_same_v<ncclComm_t, ncclComm*>);
#endif

namespace gradnoise::detail {
namespace {

__global__ void add_into(double* left, const double* right, std::size_t count) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t j = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < count; j += stride) {
    left[j] = __dadd_rn(left[j], right[j]);
  }
}

class NcclSum final : public DeviceSum {
 public:
  NcclSum(const NcclLibrary& library, const nccl_abi::UniqueId& id, Communicator& comm)
      : library_(library), comm_(comm) {
    check_nccl(library_, library_.comm_init_rank(&nccl_, comm.size(), id, comm.rank()), "ncclCommInitRank");
  }
  NcclSum(const NcclSum&) = delete;
  NcclSum& operator=(const NcclSum&) = delete;
  ~NcclSum() override {
    if (nccl_ != nullptr) library_.comm_destroy(nccl_);
  }

  void sum(double* values, std::size_t count) override {
    if (count == 0) return;
    if (own_.size() < count) {
      own_ = cuda::DeviceBuffer<double>(count);
      other_ = cuda::DeviceBuffer<double>(count);
    }
    const std::size_t bytes = count * sizeof(double);
    cudaStream_t stream = stream_.get();
    GN_CUDA_CHECK(cudaMemcpyAsync(own_.data(), values, bytes, cudaMemcpyHostToDevice, stream));
    const int threads = 256;
    const int blocks = static_cast<int>(std::min<std::size_t>((count + threads - 1) / threads, 1024));
    // Bytes are counted as Communicator::reduce counts them: the same on both paths.
    walk_tree(
        comm_.rank(), comm_.size(),
        [&](int from) {
          check_nccl(library_, library_.recv(other_.data(), count, nccl_abi::kFloat64, from, nccl_, stream),
                     "ncclRecv");
          add_into<<<blocks, threads, 0, stream>>>(own_.data(), other_.data(), count);
          GN_CUDA_CHECK(cudaGetLastError());
          comm_.count_device(bytes);
        },
        [&](int to) {
          check_nccl(library_, library_.send(own_.data(), count, nccl_abi::kFloat64, to, nccl_, stream),
                     "ncclSend");
          comm_.count_device(bytes);
        });
    check_nccl(library_,
               library_.broadcast(own_.data(), own_.data(), count, nccl_abi::kFloat64, 0, nccl_, stream),
               "ncclBroadcast");
    comm_.count_device(bytes);
    GN_CUDA_CHECK(cudaMemcpyAsync(values, own_.data(), bytes, cudaMemcpyDeviceToHost, stream));
    GN_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

 private:
  const NcclLibrary& library_;
  Communicator& comm_;
  ncclComm* nccl_ = nullptr;
  cuda::Stream stream_;
  cuda::DeviceBuffer<double> own_, other_;
};

}  // namespace

std::unique_ptr<DeviceSum> make_nccl_sum(const NcclLibrary& library, const nccl_abi::UniqueId& id,
                                         Communicator& comm) {
  return std::make_unique<NcclSum>(library, id, comm);
}

}  // namespace gradnoise::detail
