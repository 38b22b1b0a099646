// The epoch permutation of sampling without replacement (core/random.hpp
// EpochPermutation, a keyed Feistel network with cycle walking) against
// independent references: it is a bijection for every size and key; across
// keys its positions and its adjacent pairs are uniform (Pearson χ² against
// the exact distribution of a uniform permutation), as is a textbook
// Fisher–Yates shuffle driven by std::mt19937_64, and the two agree (a
// two-sample χ²); one large order looks shuffled (ascents, rank and serial
// correlations); epochs, replicas and seeds give unrelated orders.
//
// Every statistical test is deterministic (fixed seeds) at a documented
// significance level: a uniform shuffle fails it with probability at most
// kAlpha (family-wise where one test makes several comparisons). Each test
// also shows it has power: the identity and a one-round network fail it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "random.hpp"

namespace gradnoise {
namespace {

using Order = std::vector<std::int64_t>;
/// An order of n rows for key number `key`.
using Shuffle = std::function<Order(std::int64_t key, std::int64_t n)>;

constexpr double kAlpha = 1e-4;  // each test's chance of failing a uniform shuffle

/// The epoch permutation with `rounds` rounds; the key number picks the seed,
/// the replica or the epoch (`vary`), the others fixed.
enum class Vary { seed, replica, epoch };

Shuffle feistel(int rounds, Vary vary = Vary::seed) {
  return [rounds, vary](std::int64_t key, std::int64_t n) {
    const auto k = static_cast<std::uint32_t>(key);
    const detail::EpochPermutation permutation(vary == Vary::seed ? 1000 + key : 77,
                                               vary == Vary::replica ? k : 3,
                                               vary == Vary::epoch ? k : 5, n, rounds);
    Order order(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) order[static_cast<std::size_t>(i)] = permutation(i);
    return order;
  };
}

/// The reference: Fisher–Yates (Knuth's Algorithm P) on a Mersenne twister.
Order fisher_yates(std::int64_t key, std::int64_t n) {
  std::mt19937_64 generator(static_cast<std::uint64_t>(key) + 12345);
  Order order(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) order[static_cast<std::size_t>(i)] = i;
  for (std::int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<std::int64_t>(generator() % static_cast<std::uint64_t>(i + 1));
    std::swap(order[static_cast<std::size_t>(i)], order[static_cast<std::size_t>(j)]);
  }
  return order;
}

Order identity(std::int64_t /*key*/, std::int64_t n) {
  Order order(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) order[static_cast<std::size_t>(i)] = i;
  return order;
}

std::vector<Order> draw(const Shuffle& shuffle, std::int64_t keys, std::int64_t n) {
  std::vector<Order> orders;
  for (std::int64_t key = 0; key < keys; ++key) orders.push_back(shuffle(key, n));
  return orders;
}

// ---- χ² tails -------------------------------------------------------------------

/// z with P(Z > z) = alpha for a standard normal Z (bisection on erfc).
double normal_upper_quantile(double alpha) {
  double low = 0, high = 40;
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (low + high);
    (0.5 * std::erfc(mid / std::sqrt(2.0)) > alpha ? low : high) = mid;
  }
  return low;
}

/// The χ² quantile with upper tail alpha (Wilson and Hilferty's cube-root
/// normal approximation, within a percent for df ≥ 9 at these tails).
double chi_square_upper_quantile(double df, double alpha) {
  const double z = normal_upper_quantile(alpha);
  const double v = 2.0 / (9.0 * df);
  return df * std::pow(1.0 - v + z * std::sqrt(v), 3);
}

/// Pearson's statistic of `counts` against `expected`, over cells expected
/// to be non-empty; a count in a cell expected empty makes it infinite.
double pearson(const std::vector<double>& counts, const std::vector<double>& expected, double& df) {
  double statistic = 0;
  df = -1;
  for (std::size_t c = 0; c < counts.size(); ++c) {
    if (expected[c] == 0) {
      if (counts[c] != 0) return INFINITY;
      continue;
    }
    statistic += (counts[c] - expected[c]) * (counts[c] - expected[c]) / expected[c];
    df += 1;
  }
  return statistic;
}

// ---- The statistics ------------------------------------------------------------

/// Which row each position holds, over all keys: the n × n table of counts
/// C[i][v] = #{keys: π(i) = v}. For uniform permutations its rows and
/// columns each sum to the key count and Cov(vec C) = keys/(n − 1) · Q ⊗ Q
/// (Q = I − 11ᵀ/n), so Pearson's X² · (n − 1)/n is χ² with (n − 1)² degrees
/// of freedom. Passes when that is below the kAlpha quantile.
bool positions_uniform(const std::vector<Order>& orders, std::int64_t n) {
  std::vector<double> counts(static_cast<std::size_t>(n * n), 0.0);
  for (const Order& order : orders) {
    for (std::int64_t i = 0; i < n; ++i) counts[static_cast<std::size_t>(i * n + order[static_cast<std::size_t>(i)])] += 1;
  }
  const std::vector<double> expected(counts.size(), static_cast<double>(orders.size()) / static_cast<double>(n));
  double df = 0;
  const double statistic = pearson(counts, expected, df) * static_cast<double>(n - 1) / static_cast<double>(n);
  const double df_table = static_cast<double>((n - 1) * (n - 1));
  return statistic < chi_square_upper_quantile(df_table, kAlpha);
}

/// The rows at positions i and i + 1 over all keys, each cut into `bins`
/// equal bins (bins divides n): for a uniform permutation bins (I, J) hold
/// the pair with probability s/n · (s − [I = J])/(n − 1), s = n/bins, so
/// Pearson's X² is χ² with (cells − 1) degrees of freedom.
double adjacent_pair_statistic(const std::vector<Order>& orders, std::int64_t n, std::int64_t bins,
                               std::int64_t i, double& df) {
  const std::int64_t size = n / bins;
  std::vector<double> counts(static_cast<std::size_t>(bins * bins), 0.0), expected(counts.size());
  for (const Order& order : orders) {
    const std::int64_t first = order[static_cast<std::size_t>(i)] / size;
    const std::int64_t second = order[static_cast<std::size_t>(i + 1)] / size;
    counts[static_cast<std::size_t>(first * bins + second)] += 1;
  }
  const auto keys = static_cast<double>(orders.size());
  for (std::int64_t a = 0; a < bins; ++a) {
    for (std::int64_t b = 0; b < bins; ++b) {
      expected[static_cast<std::size_t>(a * bins + b)] =
          keys * static_cast<double>(size) / static_cast<double>(n) *
          static_cast<double>(size - (a == b ? 1 : 0)) / static_cast<double>(n - 1);
    }
  }
  return pearson(counts, expected, df);
}

/// Adjacent pairs at `checked` positions, each at kAlpha / checked.
bool adjacent_pairs_uniform(const std::vector<Order>& orders, std::int64_t n, std::int64_t bins,
                            const std::vector<std::int64_t>& checked) {
  for (const std::int64_t i : checked) {
    double df = 0;
    const double statistic = adjacent_pair_statistic(orders, n, bins, i, df);
    if (!(statistic < chi_square_upper_quantile(df, kAlpha / static_cast<double>(checked.size())))) return false;
  }
  return true;
}

/// Two samples of orders from the same distribution? The two-sample χ² of
/// their adjacent-pair tables at position i, Σ (A − B)²/(A + B) over cells
/// (equal key counts), is χ² with (cells − 1) degrees of freedom.
bool same_pair_distribution(const std::vector<Order>& a, const std::vector<Order>& b, std::int64_t n,
                            std::int64_t i) {
  std::vector<double> counts_a(static_cast<std::size_t>(n * n), 0.0), counts_b(counts_a.size(), 0.0);
  for (const Order& order : a) counts_a[static_cast<std::size_t>(order[static_cast<std::size_t>(i)] * n + order[static_cast<std::size_t>(i + 1)])] += 1;
  for (const Order& order : b) counts_b[static_cast<std::size_t>(order[static_cast<std::size_t>(i)] * n + order[static_cast<std::size_t>(i + 1)])] += 1;
  double statistic = 0, df = -1;
  for (std::size_t c = 0; c < counts_a.size(); ++c) {
    if (counts_a[c] + counts_b[c] == 0) continue;
    statistic += (counts_a[c] - counts_b[c]) * (counts_a[c] - counts_b[c]) / (counts_a[c] + counts_b[c]);
    df += 1;
  }
  return statistic < chi_square_upper_quantile(df, kAlpha);
}

/// Pearson's correlation of x and y, times √n: about standard normal when
/// they are unrelated.
double correlation_z(const std::vector<double>& x, const std::vector<double>& y) {
  const auto n = static_cast<double>(x.size());
  double mx = 0, my = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    mx += x[i] / n;
    my += y[i] / n;
  }
  double sxy = 0, sxx = 0, syy = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) * (x[i] - mx);
    syy += (y[i] - my) * (y[i] - my);
  }
  return sxy / std::sqrt(sxx * syy) * std::sqrt(n);
}

/// One large order against a uniform permutation, three ways, each |z| below
/// the two-sided kAlpha/3 normal quantile: its ascents (mean (n − 1)/2,
/// variance (n + 1)/12), the correlation of position and row, and of
/// neighbouring rows.
bool looks_shuffled(const Order& order) {
  const auto n = static_cast<std::int64_t>(order.size());
  const double limit = normal_upper_quantile(kAlpha / 6);
  double ascents = 0;
  std::vector<double> position, row, next;
  for (std::int64_t i = 0; i + 1 < n; ++i) {
    ascents += order[static_cast<std::size_t>(i + 1)] > order[static_cast<std::size_t>(i)] ? 1 : 0;
    position.push_back(static_cast<double>(i));
    row.push_back(static_cast<double>(order[static_cast<std::size_t>(i)]));
    next.push_back(static_cast<double>(order[static_cast<std::size_t>(i + 1)]));
  }
  const double ascents_z = (ascents - static_cast<double>(n - 1) / 2) / std::sqrt(static_cast<double>(n + 1) / 12);
  return std::abs(ascents_z) < limit && std::abs(correlation_z(position, row)) < limit &&
         std::abs(correlation_z(row, next)) < limit;
}

// ---- The tests -------------------------------------------------------------------

TEST(EpochPermutation, IsABijectionForEverySizeAndKey) {
  struct Key {
    std::uint64_t seed;
    std::uint32_t replica, epoch;
  };
  const Key keys[] = {{0, 0, 0}, {42, 7, 3}, {(std::uint64_t{1} << 40) + 5, 0x80000000u, 0xffffffffu}};
  // 1048573 is the largest prime below 2^20.
  for (const std::int64_t n : {1, 2, 3, 7, 64, 255, 256, 257, 1000, 60000, 1048573}) {
    for (const Key& key : keys) {
      const detail::EpochPermutation permutation(key.seed, key.replica, key.epoch, n);
      std::vector<std::uint8_t> hit(static_cast<std::size_t>(n), 0);
      std::int64_t misses = 0;
      for (std::int64_t i = 0; i < n; ++i) {
        const std::int64_t row = permutation(i);
        if (row < 0 || row >= n || hit[static_cast<std::size_t>(row)] != 0) {
          ++misses;
        } else {
          hit[static_cast<std::size_t>(row)] = 1;
        }
      }
      EXPECT_EQ(misses, 0) << "n " << n << ", seed " << key.seed;
    }
  }
}

TEST(EpochPermutation, PositionsAreUniformAcrossKeys) {
  // N = 10 walks in 2^8 values; 20 000 keys give each cell 2 000 expected.
  const std::int64_t n = 10, keys = 20000;
  EXPECT_TRUE(positions_uniform(draw(fisher_yates, keys, n), n));
  for (const Vary vary : {Vary::seed, Vary::replica, Vary::epoch}) {
    EXPECT_TRUE(positions_uniform(draw(feistel(detail::kPermutationRounds, vary), keys, n), n))
        << "varying key part " << static_cast<int>(vary);
  }
  // Power: the identity, one round, and a network that ignores the epoch.
  EXPECT_FALSE(positions_uniform(draw(identity, keys, n), n));
  EXPECT_FALSE(positions_uniform(draw(feistel(1), keys, n), n));
  const Shuffle ignores_epoch = [](std::int64_t /*key*/, std::int64_t size) { return feistel(6)(0, size); };
  EXPECT_FALSE(positions_uniform(draw(ignores_epoch, keys, n), n));
}

TEST(EpochPermutation, AdjacentPositionsArePairwiseUniform) {
  // N = 10: every ordered pair of distinct rows at every neighbouring
  // position (90 cells, 9 positions); N = 300 (an odd m = 9: parts of 4
  // and 5 bits, one or two passes) in 10 bins of 30 rows at three positions.
  struct Case {
    std::int64_t n, bins, keys;
    std::vector<std::int64_t> checked;
  };
  const Case cases[] = {{10, 10, 20000, {0, 1, 2, 3, 4, 5, 6, 7, 8}}, {300, 10, 20000, {0, 149, 298}}};
  for (const Case& c : cases) {
    SCOPED_TRACE("n " + std::to_string(c.n));
    EXPECT_TRUE(adjacent_pairs_uniform(draw(fisher_yates, c.keys, c.n), c.n, c.bins, c.checked));
    EXPECT_TRUE(adjacent_pairs_uniform(draw(feistel(detail::kPermutationRounds), c.keys, c.n), c.n, c.bins, c.checked));
    EXPECT_FALSE(adjacent_pairs_uniform(draw(identity, c.keys, c.n), c.n, c.bins, c.checked));
    EXPECT_FALSE(adjacent_pairs_uniform(draw(feistel(1), c.keys, c.n), c.n, c.bins, c.checked));
  }
}

TEST(EpochPermutation, MatchesAFisherYatesShuffleInDistribution) {
  const std::int64_t n = 10, keys = 40000;
  const std::vector<Order> reference = draw(fisher_yates, keys, n);
  const std::vector<Order> ours = draw(feistel(detail::kPermutationRounds), keys, n);
  const std::vector<Order> one_round = draw(feistel(1), keys, n);
  for (const std::int64_t i : {0, 4}) {
    EXPECT_TRUE(same_pair_distribution(ours, reference, n, i)) << "position " << i;
    EXPECT_FALSE(same_pair_distribution(one_round, reference, n, i)) << "position " << i;
  }
}

TEST(EpochPermutation, LargeOrdersLookShuffled) {
  for (const std::int64_t n : {60000, 1048573}) {
    SCOPED_TRACE("n " + std::to_string(n));
    for (std::int64_t key = 0; key < 3; ++key) {
      EXPECT_TRUE(looks_shuffled(feistel(detail::kPermutationRounds)(key, n))) << "key " << key;
    }
    EXPECT_TRUE(looks_shuffled(fisher_yates(0, n)));
    EXPECT_FALSE(looks_shuffled(identity(0, n)));
    EXPECT_FALSE(looks_shuffled(feistel(1)(0, n)));
  }
}

TEST(EpochPermutation, EpochsReplicasAndSeedsDrawUnrelatedOrders) {
  // Two orders that differ in one part of the key agree at about one
  // position (Poisson(1): 12 or more has probability 1e-9) and their rows
  // are uncorrelated.
  const std::int64_t n = 1000;
  const auto order_of = [n](std::uint64_t seed, std::uint32_t replica, std::uint32_t epoch) {
    const detail::EpochPermutation permutation(seed, replica, epoch, n);
    std::vector<double> rows;
    for (std::int64_t i = 0; i < n; ++i) rows.push_back(static_cast<double>(permutation(i)));
    return rows;
  };
  const std::vector<double> base = order_of(5, 2, 0);
  const double limit = normal_upper_quantile(kAlpha / 6);
  for (const auto& other : {order_of(5, 2, 1), order_of(5, 3, 0), order_of(6, 2, 0)}) {
    std::int64_t agree = 0;
    for (std::int64_t i = 0; i < n; ++i) agree += base[static_cast<std::size_t>(i)] == other[static_cast<std::size_t>(i)] ? 1 : 0;
    EXPECT_LT(agree, 12);
    EXPECT_LT(std::abs(correlation_z(base, other)), limit);
  }
}

}  // namespace
}  // namespace gradnoise
