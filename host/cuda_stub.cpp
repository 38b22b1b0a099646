// The CUDA backend's entry points in a build without it (no nvcc found, or
// -DGRADNOISE_CUDA=OFF): they say so clearly instead of failing to link.
#include "cuda_entry.hpp"
#include "gradnoise/error.hpp"
#include "nccl.hpp"

namespace gradnoise {

bool cuda_built() { return false; }

int cuda_device_count() { return 0; }

std::string cuda_device_name() { return {}; }

void warm_up_cuda() noexcept {}

void select_cuda_device(int) {}

namespace {
[[noreturn]] void refuse() {
  throw RuntimeError(
      "--device cuda was asked for, but this gradnoise was built without the CUDA backend "
      "(no nvcc at configure time); use --device cpu or --device auto");
}
}  // namespace

Profile profile_cuda(const Model&, const DataSource&, const ProfileOptions&, CUstream_st*) {
  refuse();
}

BlockOperator covariance_operator_cuda(const Model&, const DataSource&, Loss, std::vector<double>,
                                       std::int64_t, const ResidentData*) {
  refuse();
}

BlockOperator hessian_operator_cuda(const Model&, const DataSource&, Loss, bool, std::int64_t,
                                    const ResidentData*) {
  refuse();
}

Profile profile_cuda_device(const Model&, const DeviceData&, const ProfileOptions&, CUstream_st*) {
  refuse();
}

void ResidentDataDeleter::operator()(ResidentData*) const {}

std::int64_t resident_bytes(const DataSource&, Loss, GpuDtype) { return 0; }

ResidentDataPtr make_resident(const DataSource&, Loss, GpuDtype) { refuse(); }

Profile profile_resident(ResidentData&, const Model&, const ProfileOptions&) { refuse(); }

void SweepCudaStateDeleter::operator()(SweepCudaState*) const {}

SweepCudaStatePtr sweep_cuda_create(const SweepCudaSetup&) { refuse(); }

std::vector<SweepRunOutcome> sweep_advance_cuda(SweepCudaState&, std::vector<double>&,
                                                std::vector<double>&,
                                                const std::vector<std::uint8_t>&, std::int64_t,
                                                std::int64_t, CUstream_st*) {
  refuse();
}

namespace detail {

std::unique_ptr<DeviceSum> make_nccl_sum(const NcclLibrary&, const nccl_abi::UniqueId&, Communicator&) {
  refuse();
}

}  // namespace detail
}  // namespace gradnoise
