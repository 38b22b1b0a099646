// Large scratch buffers of the CPU engine (a chunk's activations, errors and
// products), kept by a process-wide cache between passes. A profile inside a
// training loop allocates the same buffers call after call; from the system
// allocator each one would be a fresh mapping (page faults on first touch,
// an munmap at the end), which at N = 4096 cost about half of a call. Blocks
// below kScratchCachedBytes go to the system allocator as usual.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace gradnoise::detail {

inline constexpr std::size_t kScratchCachedBytes = std::size_t{64} << 10;
/// At most this many bytes wait in the cache; the rest is freed.
inline constexpr std::size_t kScratchCacheLimit = std::size_t{512} << 20;

/// A block of at least `bytes` bytes (a cached one of exactly that size when
/// there is one), aligned for any scalar type.
void* scratch_allocate(std::size_t bytes);
/// Gives a block from scratch_allocate back (to the cache, while under its limit).
void scratch_release(void* block, std::size_t bytes) noexcept;
/// Bytes now waiting in the cache (for tests).
std::size_t scratch_cached_bytes();

template <typename T>
struct ScratchAllocator {
  using value_type = T;
  ScratchAllocator() = default;
  template <typename U>
  ScratchAllocator(const ScratchAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(scratch_allocate(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) noexcept { scratch_release(p, n * sizeof(T)); }
  template <typename U>
  bool operator==(const ScratchAllocator<U>&) const noexcept {
    return true;
  }
};

/// A std::vector whose storage comes from the scratch cache.
template <typename T>
using ScratchVector = std::vector<T, ScratchAllocator<T>>;

}  // namespace gradnoise::detail
