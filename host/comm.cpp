// The collectives every communicator shares (a fixed binary tree over the
// ranks' point-to-point messages), the error agreement, and the single
// process. host/comm_mpi.cpp adds MPI; host/comm_serial.cpp stands in for
// it when the build has no MPI.
#include "comm.hpp"

#include <cstring>
#include <new>

#include "gradnoise/error.hpp"
#include "tree.hpp"

namespace gradnoise::detail {

void Communicator::reduce(std::vector<double>& values, const Combine& combine) {
  if (size() == 1) return;
  const std::size_t bytes = values.size() * sizeof(double);
  std::vector<double> later(values.size());
  walk_tree(
      rank(), size(),
      [&](int from) {
        recv(from, later.data(), bytes);
        count(bytes);
        combine(values, later);
      },
      [&](int to) {
        send(to, values.data(), bytes);
        count(bytes);
      });
  broadcast_raw(values.data(), bytes, 0);
  count(bytes);
}

void Communicator::sum(std::vector<double>& values) {
  reduce(values, [](std::vector<double>& left, const std::vector<double>& right) {
    for (std::size_t j = 0; j < left.size(); ++j) left[j] += right[j];
  });
}

double Communicator::sum(double value) {
  std::vector<double> values{value};
  sum(values);
  return values[0];
}

std::int64_t Communicator::max(std::int64_t value) {
  if (size() == 1) return value;
  count(sizeof value);
  return -min_raw(-value);
}

void Communicator::broadcast(std::string& bytes, int root) {
  if (size() == 1) return;
  std::uint64_t length = bytes.size();
  broadcast_raw(&length, sizeof length, root);
  bytes.resize(length);
  broadcast_raw(bytes.data(), length, root);
  count(sizeof length + length);
}

std::vector<std::string> Communicator::gather(const std::string& bytes) {
  std::vector<std::string> all;
  if (rank() != 0) {
    const std::uint64_t length = bytes.size();
    send(0, &length, sizeof length);
    send(0, bytes.data(), length);
    count(sizeof length + length);
    return all;
  }
  all.push_back(bytes);
  for (int from = 1; from < size(); ++from) {
    std::uint64_t length = 0;
    recv(from, &length, sizeof length);
    std::string part(length, '\0');
    recv(from, part.data(), length);
    count(sizeof length + length);
    all.push_back(std::move(part));
  }
  return all;
}

void Communicator::agree(std::exception_ptr local_failure) {
  if (size() == 1) {
    if (local_failure) std::rethrow_exception(local_failure);
    return;
  }
  const int first = static_cast<int>(min_raw(local_failure ? rank() : size()));
  count(sizeof(std::int64_t));
  if (first == size()) return;
  // The packet: one byte of kind ('I' input, 'R' runtime), then the message.
  std::string packet;
  if (rank() == first) {
    try {
      std::rethrow_exception(local_failure);
    } catch (const InputError& error) {
      packet = std::string("I") + error.what();
    } catch (const std::bad_alloc&) {
      packet = "Rout of memory";
    } catch (const std::exception& error) {
      packet = std::string("R") + error.what();
    } catch (...) {
      packet = "Ran unknown failure";
    }
  }
  broadcast(packet, first);
  failure_agreed_ = true;
  const std::string message =
      "rank " + std::to_string(first) + " of " + std::to_string(size()) + ": " + packet.substr(1);
  if (packet[0] == 'I') throw InputError(message);
  throw RuntimeError(message);
}

namespace {

/// One process: every collective is the identity.
class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string library() const override { return "single process"; }
  int local_rank() const override { return 0; }
  [[noreturn]] void abort(int status) override { std::exit(status); }

 protected:
  void send(int, const void*, std::size_t) override {}
  void recv(int, void*, std::size_t) override {}
  std::int64_t min_raw(std::int64_t value) override { return value; }
  void broadcast_raw(void*, std::size_t, int) override {}
};

}  // namespace

Communicator* mpi_world();  // host/comm_mpi.cpp, or null (host/comm_serial.cpp)

Communicator& world() {
  static Communicator* const chosen = [] {
    Communicator* mpi = mpi_world();
    if (mpi != nullptr) return mpi;
    static SingleProcess single;
    return static_cast<Communicator*>(&single);
  }();
  return *chosen;
}

}  // namespace gradnoise::detail
