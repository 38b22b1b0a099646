// Σ V, the dense Σ, tr(Σ²) and the top of Σ's spectrum, all from the rank-one
// factors that for_each_chunk exposes (g_{l,i} = δ_{l,i} ã_{l,i}ᵀ).
//
// Parallelism follows the profile: the rows are split into T contiguous runs
// of whole chunks, each thread streams its run with its own buffers and
// single-threaded BLAS, and the threads' partial sums are added in thread
// order, so a result depends only on the data, the chunk size and T. The
// dense Σ is the exception: one stream, with dsyrk itself multi-threaded.
#include "gradnoise/covariance.hpp"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cctype>
#include <cmath>
#include <exception>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "blas_threads.hpp"
#include "chunk_pass.hpp"
#include "covariance_pass.hpp"
#include "gradnoise/error.hpp"
#include "backend.hpp"
#include "hessian_host.hpp"

namespace gradnoise {
namespace {

using detail::ChunkView;

int to_int(std::int64_t value) { return static_cast<int>(value); }
std::size_t to_size(std::int64_t value) { return static_cast<std::size_t>(value); }
std::int64_t ceil_div(std::int64_t count, std::int64_t block) { return (count + block - 1) / block; }

/// Rows [first, first + count) of another source, as a source of its own.
class RowRange final : public DataSource {
 public:
  RowRange(const DataSource& base, std::int64_t first, std::int64_t count)
      : base_(base), first_(first), count_(count) {}
  std::int64_t num_samples() const override { return count_; }
  std::int64_t num_features() const override { return base_.num_features(); }
  TargetKind target_kind() const override { return base_.target_kind(); }
  std::int64_t num_targets() const override { return base_.num_targets(); }
  void read(std::int64_t first, std::int64_t count, double* x, double* y,
            std::int32_t* labels) const override {
    base_.read(first_ + first, count, x, y, labels);
  }

 private:
  const DataSource& base_;
  std::int64_t first_;
  std::int64_t count_;
};

using detail::SingleThreadedBlas;

/// for_each_chunk names a bad sample by its index in the source it was given
/// ("sample 5 has ..."); a RowRange starting at `offset` shifts that index.
std::string renumber_sample(const std::string& message, std::int64_t offset) {
  const std::string prefix = "sample ";
  if (message.rfind(prefix, 0) != 0) return message;
  std::size_t end = prefix.size();
  while (end < message.size() && std::isdigit(static_cast<unsigned char>(message[end])) != 0) ++end;
  if (end == prefix.size()) return message;
  const std::int64_t index = std::stoll(message.substr(prefix.size(), end - prefix.size()));
  return prefix + std::to_string(index + offset) + message.substr(end);
}

/// How many threads a pass over `rows` rows in chunks of `chunk` uses.
std::int64_t pass_threads(std::int64_t rows, std::int64_t chunk) {
  const auto hardware = static_cast<std::int64_t>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max<std::int64_t>(1, std::min(hardware, ceil_div(rows, std::max<std::int64_t>(1, chunk))));
}

/// One pass over rows [first, first + count) of `data` in chunks, split over
/// `threads` threads by contiguous runs of whole chunks. visit(t, row, view)
/// gets the thread index and the global index of the chunk's first row.
void parallel_pass(const Model& model, const DataSource& data, Loss loss, std::int64_t chunk_rows,
                   std::int64_t first, std::int64_t count, std::int64_t threads,
                   const std::function<void(std::int64_t, std::int64_t, const ChunkView&)>& visit) {
  const std::int64_t chunk = std::max<std::int64_t>(1, std::min(chunk_rows, count));
  const std::int64_t chunks_per_thread = ceil_div(ceil_div(count, chunk), threads);
  std::vector<std::exception_ptr> failures(to_size(threads));
  const auto run = [&](std::int64_t t) {
    try {
      const std::int64_t begin = std::min(count, t * chunks_per_thread * chunk);
      const std::int64_t end = std::min(count, (t + 1) * chunks_per_thread * chunk);
      if (begin >= end) return;
      const RowRange rows(data, first + begin, end - begin);
      try {
        detail::for_each_chunk(model, rows, loss, chunk, [&](const ChunkView& view) {
          visit(t, first + begin + view.first, view);
        });
      } catch (const InputError& e) {
        throw InputError(renumber_sample(e.what(), first + begin));
      }
    } catch (...) {
      failures[t] = std::current_exception();
    }
  };
  {
    const SingleThreadedBlas blas(threads > 1);
    std::vector<std::thread> helpers;
    for (std::int64_t t = 1; t < threads; ++t) helpers.emplace_back(run, t);
    run(0);
    for (std::thread& helper : helpers) helper.join();
  }
  // The earliest rows' failure is the one a serial pass would have met first.
  for (const std::exception_ptr& failure : failures) {
    if (failure) std::rethrow_exception(failure);
  }
}

void check_inputs(const Model& model, const DataSource& data, Loss loss, std::int64_t chunk_rows,
                  const std::vector<double>& mean_grad) {
  ProfileOptions options;
  options.loss = loss;
  options.chunk_rows = chunk_rows;
  check_profile_inputs(model, data, options);
  if (static_cast<std::int64_t>(mean_grad.size()) != model.num_params()) {
    throw InputError("the mean gradient has " + std::to_string(mean_grad.size()) +
                     " entries; expected one per parameter, P = " +
                     std::to_string(model.num_params()));
  }
}

std::string megabytes(double bytes) {
  return std::to_string(static_cast<std::int64_t>(std::ceil(bytes / (1024.0 * 1024.0)))) + " MiB";
}

}  // namespace

// ---- CovarianceOperator ---------------------------------------------------

CovarianceOperator::CovarianceOperator(const Model& model, const DataSource& data, Loss loss,
                                       std::vector<double> mean_grad, std::int64_t chunk_rows,
                                       std::int64_t layer)
    : model_(model), data_(data), loss_(loss), chunk_rows_(chunk_rows), layer_(layer) {
  check_inputs(model, data, loss, chunk_rows, mean_grad);
  if (layer < -1 || layer >= model.num_layers()) {
    throw InputError("layer " + std::to_string(layer) + " does not exist; expected −1 (all) or 0.." +
                     std::to_string(model.num_layers() - 1));
  }
  if (layer < 0) {
    dim_ = model.num_params();
    mean_grad_ = std::move(mean_grad);
  } else {
    dim_ = model.layers[layer].num_params();
    const auto begin = mean_grad.begin() + model.param_offset(layer);
    mean_grad_.assign(begin, begin + dim_);
  }
}

BlockOperator CovarianceOperator::as_block_operator() const {
  return [this](const double* in, double* out, std::int64_t cols) { apply(in, out, cols); };
}

namespace {

/// covariance_pass.hpp's executor on the CPU: every GEMM as the row-major
/// call it is, the row operations as loops.
struct CovarianceCpuExec : detail::CovarianceHostOps {
  void gemm(const detail::RowMajorGemm& g, const double* a, const double* b, double* c) {
    detail::RowMajorBlasExec{}.gemm(g, a, b, c);
  }
};

}  // namespace

void CovarianceOperator::apply(const double* in, double* out, std::int64_t cols) const {
  if (cols < 1) return;
  const std::int64_t n = data_.num_samples();
  const detail::CovarianceLayers layers = detail::covariance_layers(model_, layer_);
  const detail::CovarianceBlock block = detail::pack_covariance_block(
      model_, layers, mean_grad_, in, cols, [](std::int64_t count, const double* x, const double* y) {
        return cblas_ddot(to_int(count), x, 1, y, 1);
      });

  // Per thread: its sums of g_i c_i and c_i, and scratch for m × cols scalars
  // and m × (cols·out) products.
  struct Partial {
    detail::CovarianceSums sums;
    std::vector<double> s, z;
    detail::CovarianceBuffers buffers;
  };
  const std::int64_t chunk = std::max<std::int64_t>(1, std::min(chunk_rows_, n));
  const std::int64_t threads = pass_threads(n, chunk);
  std::vector<Partial> partials(to_size(threads));
  for (Partial& p : partials) {
    p.sums = detail::zero_covariance_sums(model_, layers, cols);
    p.s.resize(to_size(chunk * cols));
    p.z.resize(to_size(chunk * cols * layers.widest));
    p.buffers = detail::covariance_buffers(layers, block, p.sums, p.s.data(), p.z.data());
  }

  parallel_pass(model_, data_, loss_, chunk, 0, n, threads,
                [&](std::int64_t t, std::int64_t, const ChunkView& view) {
    detail::CovarianceBuffers& b = partials[t].buffers;
    for (std::int64_t l = layers.first; l < layers.end; ++l) {
      b.layers[l].input = view.inputs[l];
      b.layers[l].error = view.errors[l];
    }
    CovarianceCpuExec exec;
    detail::covariance_chunk(exec, model_, layers, b, view.rows, cols);
  });
  ++passes_;

  detail::CovarianceSums& total = partials[0].sums;
  for (std::int64_t t = 1; t < threads; ++t) {
    const detail::CovarianceSums& part = partials[t].sums;
    for (std::int64_t l = layers.first; l < layers.end; ++l) {
      for (std::size_t j = 0; j < total.layers[l].w.size(); ++j) total.layers[l].w[j] += part.layers[l].w[j];
      for (std::size_t j = 0; j < total.layers[l].b.size(); ++j) total.layers[l].b[j] += part.layers[l].b[j];
    }
    for (std::int64_t c = 0; c < cols; ++c) total.c_sum[c] += part.c_sum[c];
  }
  detail::unpack_covariance_block(model_, layers, total, mean_grad_, cols,
                                  1.0 / static_cast<double>(n), out);
}

// ---- Dense Σ --------------------------------------------------------------

std::vector<double> covariance_matrix(const Model& model, const DataSource& data, Loss loss,
                                      const std::vector<double>& mean_grad,
                                      std::int64_t max_params, std::int64_t chunk_rows) {
  const std::int64_t p = model.num_params();
  if (p > max_params) {
    throw InputError("the dense covariance of P = " + std::to_string(p) +
                     " parameters would take " +
                     megabytes(8.0 * static_cast<double>(p) * static_cast<double>(p)) +
                     "; expected P ≤ " + std::to_string(max_params) +
                     " (use CovarianceOperator for matrix-free products)");
  }
  check_inputs(model, data, loss, chunk_rows, mean_grad);
  const std::int64_t n = data.num_samples();
  const double inv_n = 1.0 / static_cast<double>(n);
  std::vector<double> sigma(to_size(p * p), 0.0);
  // Centred gradients g_i − G, kGroup rows at a time (kGroup·P doubles of
  // scratch); dsyrk adds each group's X Xᵀ / N to the lower triangle.
  constexpr std::int64_t kGroup = 256;
  std::vector<double> centred(to_size(kGroup * p));
  detail::for_each_chunk(model, data, loss, chunk_rows, [&](const ChunkView& view) {
    for (std::int64_t start = 0; start < view.rows; start += kGroup) {
      const std::int64_t rows = std::min(kGroup, view.rows - start);
      for (std::int64_t l = 0; l < model.num_layers(); ++l) {
        const Layer& layer = model.layers[l];
        const std::int64_t o = layer.out, d = layer.in, off = model.param_offset(l);
        const double* g_mean = mean_grad.data() + off;
        for (std::int64_t i = 0; i < rows; ++i) {
          const double* a = view.inputs[l] + (start + i) * d;
          const double* delta = view.errors[l] + (start + i) * o;
          double* x = centred.data() + i * p + off;
          for (std::int64_t r = 0; r < o; ++r) {
            for (std::int64_t s = 0; s < d; ++s) x[r * d + s] = delta[r] * a[s] - g_mean[r * d + s];
          }
          if (layer.has_bias()) {
            for (std::int64_t r = 0; r < o; ++r) x[o * d + r] = delta[r] - g_mean[o * d + r];
          }
        }
      }
      // Column-major view: P × rows with columns g_i − G; Σ += X Xᵀ / N.
      cblas_dsyrk(CblasColMajor, CblasLower, CblasNoTrans, to_int(p), to_int(rows), inv_n,
                  centred.data(), to_int(p), 1.0, sigma.data(), to_int(p));
    }
  });
  for (std::int64_t c = 0; c < p; ++c) {
    for (std::int64_t r = c + 1; r < p; ++r) sigma[r * p + c] = sigma[c * p + r];
  }
  return sigma;
}

// ---- tr(Σ²) ---------------------------------------------------------------

double trace_cov_sq_flops(const Model& model, std::int64_t n, TraceSqMethod method) {
  const auto rows = static_cast<double>(n);
  if (method == TraceSqMethod::dense) {
    const auto p = static_cast<double>(model.num_params());
    return rows * p * (p + 1);
  }
  if (method == TraceSqMethod::gram) {
    double inner = 0;
    for (const Layer& layer : model.layers) {
      inner += static_cast<double>(layer.in + 3 * layer.out + 3);
    }
    return rows * rows * inner;
  }
  throw InputError("trace_cov_sq_flops needs a concrete method (dense or gram)");
}

namespace {

/// Per-layer data means and C = (1/N) Σ u_i v_iᵀ (MATH: g̃_i = δ_i v_iᵀ + u_i āᵀ − C).
struct LayerMeans {
  std::vector<double> a_mean;      // in
  std::vector<double> delta_mean;  // out
  std::vector<double> c;           // out × in, row-major (C's bias column is 0)
  std::vector<double> c_a_mean;    // C ā
  double a_tilde_sq = 0;           // ‖ā‖², bias slot included
  double c_sq = 0;                 // ‖C‖²
};

/// The factors of one layer for a run of rows, `rows` × (in | out | 2out+3 | 2out+3):
/// v_i, δ_i, the left row [p_i δ_i + ‖ā‖² u_i, u_i, −h_i, 1, 1] and the right
/// row [u_i, p_i δ_i, 1, −h_i, ‖C‖²], so that
/// ⟨g̃_i, g̃_j⟩ = (δ_i·δ_j)(v_i·v_j) + left_i · right_j.
struct LayerFactors {
  std::int64_t in = 0, out = 0, extra = 0;
  std::vector<double> v, delta, left, right;

  void resize(std::int64_t rows, std::int64_t in_dim, std::int64_t out_dim) {
    in = in_dim;
    out = out_dim;
    extra = 2 * out_dim + 3;
    v.resize(to_size(rows * in));
    delta.resize(to_size(rows * out));
    left.resize(to_size(rows * extra));
    right.resize(to_size(rows * extra));
  }

  /// Fills rows [at, at + m) from a chunk's inputs a (m × in) and errors (m × out).
  void fill(std::int64_t at, std::int64_t m, const double* a, const double* err,
            const LayerMeans& means, std::vector<double>& cv) {
    double* vv = v.data() + at * in;
    for (std::int64_t i = 0; i < m; ++i) {
      for (std::int64_t s = 0; s < in; ++s) vv[i * in + s] = a[i * in + s] - means.a_mean[s];
    }
    std::copy_n(err, m * out, delta.data() + at * out);
    // C v_i for every row: (m × in)(in × out).
    cv.resize(to_size(m * out));
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, to_int(m), to_int(out), to_int(in), 1.0,
                vv, to_int(in), means.c.data(), to_int(in), 0.0, cv.data(), to_int(out));
    for (std::int64_t i = 0; i < m; ++i) {
      const double* vi = vv + i * in;
      const double* di = err + i * out;
      double p = 0;
      for (std::int64_t s = 0; s < in; ++s) p += vi[s] * means.a_mean[s];
      double h = 0;
      for (std::int64_t r = 0; r < out; ++r) {
        const double u = di[r] - means.delta_mean[r];
        h += di[r] * cv[i * out + r] + u * means.c_a_mean[r];
      }
      double* li = left.data() + (at + i) * extra;
      double* ri = right.data() + (at + i) * extra;
      for (std::int64_t r = 0; r < out; ++r) {
        const double u = di[r] - means.delta_mean[r];
        li[r] = p * di[r] + means.a_tilde_sq * u;
        li[out + r] = u;
        ri[r] = u;
        ri[out + r] = p * di[r];
      }
      li[2 * out] = -h;
      li[2 * out + 1] = 1.0;
      li[2 * out + 2] = 1.0;
      ri[2 * out] = 1.0;
      ri[2 * out + 1] = -h;
      ri[2 * out + 2] = means.c_sq;
    }
  }
};

std::vector<LayerMeans> layer_means(const Model& model, const DataSource& data, Loss loss,
                                    std::int64_t chunk_rows, std::int64_t& passes) {
  const std::int64_t n = data.num_samples();
  const std::int64_t num_layers = model.num_layers();
  const std::int64_t chunk = std::max<std::int64_t>(1, std::min(chunk_rows, n));
  const std::int64_t threads = pass_threads(n, chunk);
  const double inv_n = 1.0 / static_cast<double>(n);
  std::vector<LayerMeans> means(to_size(num_layers));

  // Pass 1: means of a and δ.
  std::vector<std::vector<std::vector<double>>> a_sum(to_size(threads)), d_sum(to_size(threads));
  for (std::int64_t t = 0; t < threads; ++t) {
    for (const Layer& layer : model.layers) {
      a_sum[t].emplace_back(to_size(layer.in), 0.0);
      d_sum[t].emplace_back(to_size(layer.out), 0.0);
    }
  }
  parallel_pass(model, data, loss, chunk, 0, n, threads,
                [&](std::int64_t t, std::int64_t, const ChunkView& view) {
    for (std::int64_t l = 0; l < num_layers; ++l) {
      const Layer& layer = model.layers[l];
      for (std::int64_t i = 0; i < view.rows; ++i) {
        for (std::int64_t s = 0; s < layer.in; ++s) a_sum[t][l][s] += view.inputs[l][i * layer.in + s];
        for (std::int64_t r = 0; r < layer.out; ++r) d_sum[t][l][r] += view.errors[l][i * layer.out + r];
      }
    }
  });
  ++passes;
  for (std::int64_t l = 0; l < num_layers; ++l) {
    const Layer& layer = model.layers[l];
    LayerMeans& lm = means[l];
    lm.a_mean.assign(to_size(layer.in), 0.0);
    lm.delta_mean.assign(to_size(layer.out), 0.0);
    for (std::int64_t t = 0; t < threads; ++t) {
      for (std::int64_t s = 0; s < layer.in; ++s) lm.a_mean[s] += a_sum[t][l][s];
      for (std::int64_t r = 0; r < layer.out; ++r) lm.delta_mean[r] += d_sum[t][l][r];
    }
    for (double& v : lm.a_mean) v *= inv_n;
    for (double& v : lm.delta_mean) v *= inv_n;
    lm.a_tilde_sq = (layer.has_bias() ? 1.0 : 0.0);
    for (double v : lm.a_mean) lm.a_tilde_sq += v * v;
  }

  // Pass 2: C = (1/N) Σ u_i v_iᵀ, centred on the means of pass 1.
  std::vector<std::vector<std::vector<double>>> c_sum(to_size(threads));
  std::vector<std::vector<double>> u_buf(to_size(threads)), v_buf(to_size(threads));
  for (std::int64_t t = 0; t < threads; ++t) {
    for (const Layer& layer : model.layers) c_sum[t].emplace_back(to_size(layer.out * layer.in), 0.0);
  }
  parallel_pass(model, data, loss, chunk, 0, n, threads,
                [&](std::int64_t t, std::int64_t, const ChunkView& view) {
    for (std::int64_t l = 0; l < num_layers; ++l) {
      const Layer& layer = model.layers[l];
      const std::int64_t o = layer.out, d = layer.in, m = view.rows;
      u_buf[t].resize(to_size(m * o));
      v_buf[t].resize(to_size(m * d));
      for (std::int64_t i = 0; i < m; ++i) {
        for (std::int64_t r = 0; r < o; ++r) u_buf[t][i * o + r] = view.errors[l][i * o + r] - means[l].delta_mean[r];
        for (std::int64_t s = 0; s < d; ++s) v_buf[t][i * d + s] = view.inputs[l][i * d + s] - means[l].a_mean[s];
      }
      cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, to_int(o), to_int(d), to_int(m), 1.0,
                  u_buf[t].data(), to_int(o), v_buf[t].data(), to_int(d), 1.0, c_sum[t][l].data(),
                  to_int(d));
    }
  });
  ++passes;
  for (std::int64_t l = 0; l < num_layers; ++l) {
    const Layer& layer = model.layers[l];
    LayerMeans& lm = means[l];
    lm.c.assign(to_size(layer.out * layer.in), 0.0);
    for (std::int64_t t = 0; t < threads; ++t) {
      for (std::size_t j = 0; j < lm.c.size(); ++j) lm.c[j] += c_sum[t][l][j];
    }
    for (double& v : lm.c) v *= inv_n;
    lm.c_a_mean.assign(to_size(layer.out), 0.0);
    for (std::int64_t r = 0; r < layer.out; ++r) {
      for (std::int64_t s = 0; s < layer.in; ++s) {
        lm.c_a_mean[r] += lm.c[r * layer.in + s] * lm.a_mean[s];
        lm.c_sq += lm.c[r * layer.in + s] * lm.c[r * layer.in + s];
      }
    }
  }
  return means;
}

TraceSq trace_sq_gram(const Model& model, const DataSource& data, Loss loss,
                      const TraceSqOptions& options) {
  const std::int64_t n = data.num_samples();
  const std::int64_t num_layers = model.num_layers();
  const std::int64_t chunk = std::max<std::int64_t>(1, std::min(options.chunk_rows, n));
  TraceSq result;
  result.method = TraceSqMethod::gram;
  result.flops = trace_cov_sq_flops(model, n, TraceSqMethod::gram);
  const std::vector<LayerMeans> means = layer_means(model, data, loss, chunk, result.passes);

  std::int64_t row_doubles = 0;
  for (const Layer& layer : model.layers) row_doubles += layer.in + layer.out + 2 * (2 * layer.out + 3);
  std::int64_t block_rows = options.block_rows;
  if (block_rows <= 0) {
    constexpr double kBudgetBytes = 256.0 * 1024 * 1024;
    block_rows = std::max<std::int64_t>(
        chunk, static_cast<std::int64_t>(kBudgetBytes / (8.0 * static_cast<double>(row_doubles))));
  }
  block_rows = std::min(block_rows, n);
  constexpr std::int64_t kTile = 512;   // outer rows per Gram tile
  constexpr std::int64_t kInner = 1024; // inner rows per Gram tile

  // Σ over pairs (i ≤ j) of e_ij², weight 2 off the diagonal, per layer and in total.
  std::vector<double> layer_sums(to_size(num_layers), 0.0);
  double total_sum = 0;
  std::vector<LayerFactors> outer(to_size(num_layers));
  for (std::int64_t block_first = 0; block_first < n; block_first += block_rows) {
    const std::int64_t block_count = std::min(block_rows, n - block_first);
    for (std::int64_t l = 0; l < num_layers; ++l) {
      outer[l].resize(block_count, model.layers[l].in, model.layers[l].out);
    }
    // The outer block's factors, held for the whole inner pass.
    {
      const std::int64_t threads = pass_threads(block_count, chunk);
      std::vector<std::vector<double>> scratch(to_size(threads));
      parallel_pass(model, data, loss, chunk, block_first, block_count, threads,
                    [&](std::int64_t t, std::int64_t row, const ChunkView& view) {
        for (std::int64_t l = 0; l < num_layers; ++l) {
          outer[l].fill(row - block_first, view.rows, view.inputs[l], view.errors[l], means[l],
                        scratch[t]);
        }
      });
      ++result.passes;
    }
    // Every row from the block's first on streams past the block once.
    const std::int64_t inner_count = n - block_first;
    const std::int64_t threads = pass_threads(inner_count, chunk);
    struct Worker {
      std::vector<LayerFactors> inner;
      std::vector<double> cv, vg, dg, e, e_total;
      std::vector<double> layer_sums;
      double total_sum = 0;
    };
    std::vector<Worker> workers(to_size(threads));
    for (Worker& w : workers) {
      w.inner.resize(to_size(num_layers));
      for (std::int64_t l = 0; l < num_layers; ++l) {
        w.inner[l].resize(chunk, model.layers[l].in, model.layers[l].out);
      }
      w.vg.resize(to_size(kTile * std::min(kInner, chunk)));
      w.dg.resize(w.vg.size());
      w.e.resize(w.vg.size());
      if (num_layers > 1) w.e_total.resize(w.vg.size());
      w.layer_sums.assign(to_size(num_layers), 0.0);
    }
    parallel_pass(model, data, loss, chunk, block_first, inner_count, threads,
                  [&](std::int64_t t, std::int64_t row, const ChunkView& view) {
      Worker& w = workers[t];
      const std::int64_t m = view.rows;
      for (std::int64_t l = 0; l < num_layers; ++l) {
        w.inner[l].fill(0, m, view.inputs[l], view.errors[l], means[l], w.cv);
      }
      // Tiles of the Gram block: kTile outer rows × kInner inner rows, small
      // enough that the products and the sums over them stay in cache.
      for (std::int64_t sub_first = 0; sub_first < m; sub_first += kInner) {
        const std::int64_t cols = std::min(kInner, m - sub_first);
        const std::int64_t j_first = row + sub_first;  // global row of the sub-block's first
        for (std::int64_t tile_first = 0; tile_first < block_count; tile_first += kTile) {
          const std::int64_t rows = std::min(kTile, block_count - tile_first);
          const std::int64_t i_first = block_first + tile_first;
          if (j_first + cols <= i_first) break;  // every j < every i: counted from the other side
          // Weight of pair (i, j): 2 for j > i, 1 for j = i, 0 for j < i.
          const bool all_after = j_first >= i_first + rows;
          const auto weighted_sum = [&](const double* e) {
            double sum = 0;
            if (all_after) {
              for (std::int64_t q = 0; q < rows * cols; ++q) sum += e[q] * e[q];
              return 2 * sum;
            }
            for (std::int64_t a = 0; a < rows; ++a) {
              for (std::int64_t b = 0; b < cols; ++b) {
                const std::int64_t diff = (j_first + b) - (i_first + a);
                if (diff < 0) continue;
                const double sq = e[a * cols + b] * e[a * cols + b];
                sum += diff == 0 ? sq : 2 * sq;
              }
            }
            return sum;
          };
          for (std::int64_t l = 0; l < num_layers; ++l) {
            const LayerFactors& fo = outer[l];
            const LayerFactors& fi = w.inner[l];
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, to_int(rows), to_int(cols),
                        to_int(fo.in), 1.0, fo.v.data() + tile_first * fo.in, to_int(fo.in),
                        fi.v.data() + sub_first * fo.in, to_int(fo.in), 0.0, w.vg.data(), to_int(cols));
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, to_int(rows), to_int(cols),
                        to_int(fo.out), 1.0, fo.delta.data() + tile_first * fo.out, to_int(fo.out),
                        fi.delta.data() + sub_first * fo.out, to_int(fo.out), 0.0, w.dg.data(),
                        to_int(cols));
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, to_int(rows), to_int(cols),
                        to_int(fo.extra), 1.0, fo.left.data() + tile_first * fo.extra,
                        to_int(fo.extra), fi.right.data() + sub_first * fo.extra, to_int(fo.extra),
                        0.0, w.e.data(), to_int(cols));
            for (std::int64_t q = 0; q < rows * cols; ++q) w.e[q] += w.dg[q] * w.vg[q];
            w.layer_sums[l] += weighted_sum(w.e.data());
            if (num_layers > 1) {
              if (l == 0) {
                std::copy_n(w.e.data(), rows * cols, w.e_total.data());
              } else {
                for (std::int64_t q = 0; q < rows * cols; ++q) w.e_total[q] += w.e[q];
              }
            }
          }
          w.total_sum += num_layers > 1 ? weighted_sum(w.e_total.data()) : 0.0;
        }
      }
    });
    ++result.passes;
    for (const Worker& w : workers) {
      for (std::int64_t l = 0; l < num_layers; ++l) layer_sums[l] += w.layer_sums[l];
      total_sum += w.total_sum;
    }
  }
  const double inv_n_sq = 1.0 / (static_cast<double>(n) * static_cast<double>(n));
  for (double s : layer_sums) result.layers.push_back(s * inv_n_sq);
  result.total = (num_layers > 1 ? total_sum : layer_sums[0]) * inv_n_sq;
  return result;
}

TraceSq trace_sq_dense(const Model& model, const DataSource& data, Loss loss,
                       const std::vector<double>& mean_grad, const TraceSqOptions& options) {
  const std::int64_t p = model.num_params();
  const std::vector<double> sigma =
      covariance_matrix(model, data, loss, mean_grad, options.max_dense_params, options.chunk_rows);
  TraceSq result;
  result.method = TraceSqMethod::dense;
  result.flops = trace_cov_sq_flops(model, data.num_samples(), TraceSqMethod::dense);
  result.passes = 1;
  const auto frobenius_sq = [&](std::int64_t first, std::int64_t count) {
    double sum = 0;
    for (std::int64_t c = first; c < first + count; ++c) {
      for (std::int64_t r = first; r < first + count; ++r) sum += sigma[c * p + r] * sigma[c * p + r];
    }
    return sum;
  };
  result.total = frobenius_sq(0, p);
  for (std::int64_t l = 0; l < model.num_layers(); ++l) {
    result.layers.push_back(frobenius_sq(model.param_offset(l), model.layers[l].num_params()));
  }
  return result;
}

TraceSqMethod resolve_method(const Model& model, std::int64_t n, const TraceSqOptions& options) {
  if (options.method != TraceSqMethod::automatic) return options.method;
  if (model.num_params() > options.max_dense_params) return TraceSqMethod::gram;
  // dsyrk runs about 1.5 times as many flops per second as the Gram tiles
  // (three products and elementwise sums per tile): 82 against 50 GFLOP/s on
  // Fashion-MNIST linear, 2-core Zen 3.
  constexpr double kDenseSpeedup = 1.5;
  return trace_cov_sq_flops(model, n, TraceSqMethod::dense) / kDenseSpeedup <=
                 trace_cov_sq_flops(model, n, TraceSqMethod::gram)
             ? TraceSqMethod::dense
             : TraceSqMethod::gram;
}

}  // namespace

TraceSq trace_cov_sq(const Model& model, const DataSource& data, Loss loss,
                     const std::vector<double>& mean_grad, const TraceSqOptions& options) {
  check_inputs(model, data, loss, options.chunk_rows, mean_grad);
  const TraceSqMethod method = resolve_method(model, data.num_samples(), options);
  if (method == TraceSqMethod::dense) return trace_sq_dense(model, data, loss, mean_grad, options);
  return trace_sq_gram(model, data, loss, options);
}

// ---- Spectrum -------------------------------------------------------------

namespace {

double ratio_or_nan(double num, double den) {
  if (den > 0) return num / den;
  return num == 0 ? 0.0 : std::numeric_limits<double>::quiet_NaN();
}

}  // namespace

CovarianceSpectrum covariance_spectrum(const Model& model, const DataSource& data, Loss loss,
                                       const Profile& profile, const SpectrumOptions& options,
                                       const ExternalOperator& covariance) {
  const auto start = std::chrono::steady_clock::now();
  check_inputs(model, data, loss, options.chunk_rows, profile.param_mean);
  if (static_cast<std::int64_t>(profile.layers.size()) != model.num_layers()) {
    throw InputError("the profile has " + std::to_string(profile.layers.size()) +
                     " layers; expected the model's " + std::to_string(model.num_layers()));
  }
  if (options.k < 1) {
    throw InputError("asked for " + std::to_string(options.k) + " eigenpairs; expected k ≥ 1");
  }
  const std::int64_t p = model.num_params();
  const std::int64_t n = data.num_samples();
  const auto eigen_options = [&](std::int64_t dim) {
    EigenOptions eo;
    eo.k = std::min(options.k, dim);
    eo.tol = options.tol;
    eo.max_passes = options.max_passes;
    // A pass costs a forward/backward plus about 4·N·Σ_l out_l·in_l flops per
    // column, so blocks of about k/2 beat the solver's k + 4: more passes, fewer
    // columns (Fashion-MNIST linear, k = 10: blocks of 4–8 took ~25% less time).
    eo.block = options.block > 0 ? options.block : std::min(dim, (eo.k + 1) / 2 + 1);
    eo.seed = options.seed;
    eo.progress = options.progress;
    return eo;
  };

  CovarianceSpectrum result;
  result.num_params = p;
  result.trace_cov = profile.trace_cov;
  const CovarianceOperator op(model, data, loss, profile.param_mean, options.chunk_rows);
  EigenResult eig = top_eigenpairs(p, covariance.apply ? covariance.apply : op.as_block_operator(),
                                   eigen_options(p));
  result.top_eigenvalues = eig.values;
  if (options.keep_vectors) result.top_eigenvectors = std::move(eig.vectors);
  result.residuals = eig.residuals;
  result.passes = eig.passes;
  result.converged = eig.converged;
  for (double v : result.top_eigenvalues) result.top_eigenvalues_sq_sum += v * v;
  result.effective_rank_upper_bound =
      ratio_or_nan(result.trace_cov * result.trace_cov, result.top_eigenvalues_sq_sum);

  TraceSqOptions trace_options;
  trace_options.method = options.trace_sq_method;
  trace_options.chunk_rows = options.chunk_rows;
  const TraceSqMethod method = resolve_method(model, n, trace_options);
  // Both exact methods need every row on one process: a part of a data set
  // split over MPI ranks reports the lower bound only (docs/MPI.md).
  const bool part = data.whole_samples() != n;
  const bool exact = !part && (options.exact_trace_sq ||
                               trace_cov_sq_flops(model, n, method) <= options.exact_trace_sq_max_flops);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  TraceSq trace_sq;
  if (exact) {
    trace_options.method = method;
    trace_sq = trace_cov_sq(model, data, loss, profile.param_mean, trace_options);
    result.trace_sq_passes = trace_sq.passes;
  }
  result.trace_cov_sq_exact = exact;
  result.trace_cov_sq = exact ? trace_sq.total : nan;
  result.effective_rank = exact ? ratio_or_nan(result.trace_cov * result.trace_cov, trace_sq.total) : nan;

  for (std::int64_t l = 0; l < model.num_layers(); ++l) {
    CovarianceSpectrum::Layer layer;
    layer.name = Model::layer_name(l);
    layer.num_params = model.layers[l].num_params();
    layer.trace_cov = profile.layers[l].trace_cov;
    if (model.num_layers() == 1) {
      layer.top_eigenvalues = result.top_eigenvalues;
      layer.converged = result.converged;
    } else if (options.per_layer) {
      const CovarianceOperator layer_op(model, data, loss, profile.param_mean, options.chunk_rows, l);
      const EigenResult layer_eig = top_eigenpairs(
          layer.num_params,
          options.layer_covariance ? options.layer_covariance(l) : layer_op.as_block_operator(),
          eigen_options(layer.num_params));
      layer.top_eigenvalues = layer_eig.values;
      layer.passes = layer_eig.passes;
      layer.converged = layer_eig.converged;
    }
    for (double v : layer.top_eigenvalues) layer.top_eigenvalues_sq_sum += v * v;
    layer.effective_rank_upper_bound =
        ratio_or_nan(layer.trace_cov * layer.trace_cov, layer.top_eigenvalues_sq_sum);
    layer.trace_cov_sq = exact ? trace_sq.layers[l] : nan;
    layer.effective_rank = exact ? ratio_or_nan(layer.trace_cov * layer.trace_cov, trace_sq.layers[l]) : nan;
    result.layers.push_back(std::move(layer));
  }
  result.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace gradnoise
