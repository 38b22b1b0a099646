// The MPI communicator (compiled only when CMake found MPI). MPI is started
// only under a launcher: a plain `gradnoise profile` never initialises it.
#include <mpi.h>

#include <cstdlib>
#include <limits>

#include "comm.hpp"
#include "gradnoise/error.hpp"

namespace gradnoise::detail {
namespace {

/// Set by mpirun (Open MPI), srun with PMIx or PMI-2, and MPICH's hydra.
bool launched_by_mpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"}) {
    const char* value = std::getenv(name);
    if (value != nullptr && *value != '\0') return true;
  }
  return false;
}

// MPI counts in int: long messages go in pieces of at most 1 GiB.
constexpr std::size_t kPiece = std::size_t{1} << 30;

class MpiWorld final : public Communicator {
 public:
  MpiWorld() {
    int provided = 0;
    // Only the main thread calls MPI; the engines' threads never do.
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    std::atexit([] {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized) MPI_Finalize();
    });
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local_rank_);
    MPI_Comm_free(&node);
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int length = 0;
    MPI_Get_library_version(version, &length);
    library_.assign(version, static_cast<std::size_t>(length));
    if (const auto line = library_.find_first_of(",\n"); line != std::string::npos) library_.resize(line);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string library() const override { return library_; }
  int local_rank() const override { return local_rank_; }
  [[noreturn]] void abort(int status) override {
    MPI_Abort(MPI_COMM_WORLD, status);
    std::exit(status);
  }

 protected:
  void send(int to, const void* data, std::size_t bytes) override {
    const auto* next = static_cast<const char*>(data);
    do {
      const std::size_t piece = std::min(bytes, kPiece);
      MPI_Send(next, static_cast<int>(piece), MPI_BYTE, to, 0, MPI_COMM_WORLD);
      next += piece;
      bytes -= piece;
    } while (bytes > 0);
  }
  void recv(int from, void* data, std::size_t bytes) override {
    auto* next = static_cast<char*>(data);
    do {
      const std::size_t piece = std::min(bytes, kPiece);
      MPI_Recv(next, static_cast<int>(piece), MPI_BYTE, from, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      next += piece;
      bytes -= piece;
    } while (bytes > 0);
  }
  std::int64_t min_raw(std::int64_t value) override {
    std::int64_t result = 0;
    MPI_Allreduce(&value, &result, 1, MPI_INT64_T, MPI_MIN, MPI_COMM_WORLD);
    return result;
  }
  void broadcast_raw(void* data, std::size_t bytes, int root) override {
    auto* next = static_cast<char*>(data);
    do {
      const std::size_t piece = std::min(bytes, kPiece);
      MPI_Bcast(next, static_cast<int>(piece), MPI_BYTE, root, MPI_COMM_WORLD);
      next += piece;
      bytes -= piece;
    } while (bytes > 0);
  }

 private:
  int rank_ = 0, size_ = 1, local_rank_ = 0;
  std::string library_;
};

}  // namespace

Communicator* mpi_world() {
  if (!launched_by_mpi()) return nullptr;
  static MpiWorld world;
  return &world;
}

bool mpi_built() { return true; }

}  // namespace gradnoise::detail
