// The float64 CPU backend: one streaming pass over the data in chunks.
//
// Per chunk, every layer's per-sample gradient is rank one, g_i = δ_i ã_iᵀ
// with ã_i = [a_i; 1] when the layer has a bias. We never form g_i. Instead
// each chunk's statistics are computed exactly *centred on the chunk's own
// means*, and chunks are merged with Chan et al.'s pairwise update, so tr Σ
// never comes from the cancelling difference mean‖g_i‖² − ‖G‖² (docs/MATH.md
// "Numerics"). With δ_i = δ̄ + u_i and a_i = ā + v_i (chunk means, so Σu = Σv = 0)
//
//   g_i − G_c = δ̄ v_iᵀ + u_i āᵀ + (u_i v_iᵀ − C),   C = (1/m) Σ u_i v_iᵀ,
//   G_c       = δ̄ āᵀ + C,
//
// and ‖g_i − G_c‖² summed over the chunk expands into sums of centred
// per-sample scalars (see chunk_layer_stats), none of which carries ‖G‖².
// The per-parameter variance follows the same expansion with three more
// products per layer: (U∘U)ᵀ(V∘V), Uᵀ(V∘V) and (U∘U)ᵀV.
//
// Row loops run over fixed blocks of rows whose partial sums are added in block
// order.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>
#include <exception>
#include <thread>
#include <vector>

#include "blas_threads.hpp"
#include "chunk_pass.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/profile.hpp"
#include "backend.hpp"
#include "moments.hpp"

namespace gradnoise {
namespace {

using detail::RowSums;

constexpr std::int64_t kRowBlock = 128;

std::int64_t num_blocks(std::int64_t rows) { return detail::ceil_div(rows, kRowBlock); }

/// Running moments of a vector-valued per-sample quantity, merged chunk by chunk.
struct Moments {
  std::int64_t count = 0;
  std::vector<double> mean;    // per slot
  std::vector<double> m2;      // per slot Σ (g_ij − G_j)², only when tracked
  double m2_total = 0;         // Σ_i ‖g_i − G‖²
  double sum_norm_sq = 0;      // Σ_i ‖g_i‖²

  /// Chan et al.: merges a chunk of `m` samples with mean `chunk_mean`,
  /// centred sum `chunk_m2_total` and per-slot centred sums `chunk_m2`.
  void merge(std::int64_t m, const std::vector<double>& chunk_mean, double chunk_m2_total,
             const std::vector<double>& chunk_m2, double chunk_sum_norm_sq) {
    const detail::MergeWeights w = detail::merge_weights(count, m);
    const bool per_slot = !chunk_m2.empty();
    if (mean.empty()) {
      mean.assign(chunk_mean.size(), 0.0);
      if (per_slot) m2.assign(chunk_m2.size(), 0.0);
    }
    double diff_sq = 0;
    for (std::size_t j = 0; j < mean.size(); ++j) {
      diff_sq += detail::merge_slot(mean[j], per_slot ? &m2[j] : nullptr, chunk_mean[j],
                                    per_slot ? chunk_m2[j] : 0.0, w);
    }
    m2_total += chunk_m2_total + diff_sq * w.cross;
    sum_norm_sq += chunk_sum_norm_sq;
    count += m;
  }
};

/// Scratch buffers for one chunk; sized once for the largest chunk.
/// Scratch for the per-parameter products (only with param_stats): U∘U, V∘V.
struct SquareBuffers {
  detail::ScratchVector<double> u_sq, v_sq;
};

/// Column means of a row-major m×cols matrix, summed in fixed row blocks.
void column_means(const double* mat, std::int64_t m, std::int64_t cols, double* means) {
  const std::int64_t blocks = num_blocks(m);
  std::vector<double> partial(static_cast<std::size_t>(blocks * cols), 0.0);
  for (std::int64_t blk = 0; blk < blocks; ++blk) {
    double* acc = partial.data() + blk * cols;
    const std::int64_t end = std::min(m, (blk + 1) * kRowBlock);
    for (std::int64_t i = blk * kRowBlock; i < end; ++i) {
      const double* row = mat + i * cols;
      for (std::int64_t j = 0; j < cols; ++j) acc[j] += row[j];
    }
  }
  std::fill_n(means, cols, 0.0);
  for (std::int64_t blk = 0; blk < blocks; ++blk) {
    for (std::int64_t j = 0; j < cols; ++j) means[j] += partial[blk * cols + j];
  }
  const double inv_m = 1.0 / static_cast<double>(m);
  for (std::int64_t j = 0; j < cols; ++j) means[j] *= inv_m;
}

/// Centres δ (m×out) and a (m×in) in place on their chunk means and returns the
/// per-sample sums; the rows are not needed uncentred afterwards.
RowSums centre_and_sum(double* delta, const double* act, double* centred_act, std::int64_t m,
                       std::int64_t out, std::int64_t in, const double* delta_mean,
                       const double* act_mean, bool bias) {
  const std::int64_t blocks = num_blocks(m);
  std::vector<RowSums> partial(static_cast<std::size_t>(blocks));
  {
    for (std::int64_t blk = 0; blk < blocks; ++blk) {
      RowSums acc;
      const std::int64_t end = std::min(m, (blk + 1) * kRowBlock);
      for (std::int64_t i = blk * kRowBlock; i < end; ++i) {
        detail::RowCentring errors, inputs;
        detail::centre_row(delta + i * out, delta + i * out, delta_mean, out, 0, 1, errors);
        detail::centre_row(act + i * in, centred_act + i * in, act_mean, in, 0, 1, inputs);
        acc.add_row(errors.sq, inputs.sq, errors.centred_sq, errors.mean_dot, inputs.centred_sq,
                    inputs.mean_dot, bias);
      }
      partial[blk] = acc;
    }
  }
  RowSums total;
  for (const RowSums& p : partial) total += p;
  return total;
}

void elementwise_square(const double* src, std::int64_t count, double* dst) {
  for (std::int64_t j = 0; j < count; ++j) dst[j] = src[j] * src[j];
}

/// One layer's statistics over one chunk, merged into `moments`.
/// `delta` (m×out) is overwritten with its centred values and the centred
/// `act` (m×in) is written to `centred_act` (which may be `act` itself).
void chunk_layer_stats(const Layer& layer, double* delta, const double* act, double* centred_act,
                       std::int64_t m,
                       bool param_stats, SquareBuffers& buf, Moments& moments) {
  const std::int64_t out = layer.out, in = layer.in;
  const bool bias = layer.has_bias();
  const double dm = static_cast<double>(m);

  std::vector<double> delta_mean(static_cast<std::size_t>(out)), act_mean(static_cast<std::size_t>(in));
  column_means(delta, m, out, delta_mean.data());
  column_means(act, m, in, act_mean.data());
  const RowSums rows =
      centre_and_sum(delta, act, centred_act, m, out, in, delta_mean.data(), act_mean.data(), bias);
  act = centred_act;

  // C = Uᵀ V / m; the chunk mean gradient is δ̄āᵀ + C (and δ̄ for the bias).
  const std::int64_t slots = layer.num_params();
  std::vector<double> chunk_mean(static_cast<std::size_t>(slots));
  double* c = chunk_mean.data();
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(out), static_cast<int>(in),
              static_cast<int>(m), 1.0 / dm, delta, static_cast<int>(out), act, static_cast<int>(in),
              0.0, c, static_cast<int>(in));
  double c_norm_sq = 0;
  for (std::int64_t j = 0; j < out * in; ++j) c_norm_sq += c[j] * c[j];

  double delta_mean_sq = 0, act_mean_sq = 0;
  for (double v : delta_mean) delta_mean_sq += v * v;
  for (double v : act_mean) act_mean_sq += v * v;
  const double chunk_m2_total = detail::chunk_centred_sum(rows, delta_mean_sq, act_mean_sq, bias, dm,
                                                         c_norm_sq);

  std::vector<double> chunk_m2;
  if (param_stats) {
    // Per slot: Σ_i (δ̄_r v_is + u_ir ā_s + u_ir v_is − C_rs)², expanded in
    // chunk_slot_centred_sum; a bias slot r is Σ_i u_ir².
    chunk_m2.assign(static_cast<std::size_t>(slots), 0.0);
    elementwise_square(delta, m * out, buf.u_sq.data());
    elementwise_square(act, m * in, buf.v_sq.data());
    std::vector<double> u_sq_sum(static_cast<std::size_t>(out)), v_sq_sum(static_cast<std::size_t>(in));
    column_means(buf.u_sq.data(), m, out, u_sq_sum.data());
    column_means(buf.v_sq.data(), m, in, v_sq_sum.data());
    for (double& v : u_sq_sum) v *= dm;
    for (double& v : v_sq_sum) v *= dm;
    std::vector<double> uu_vv(static_cast<std::size_t>(out * in)), u_vv(uu_vv.size()), uu_v(uu_vv.size());
    const auto gemm_tn = [&](const double* left, const double* right, double* result) {
      cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(out),
                  static_cast<int>(in), static_cast<int>(m), 1.0, left, static_cast<int>(out), right,
                  static_cast<int>(in), 0.0, result, static_cast<int>(in));
    };
    gemm_tn(buf.u_sq.data(), buf.v_sq.data(), uu_vv.data());
    gemm_tn(delta, buf.v_sq.data(), u_vv.data());
    gemm_tn(buf.u_sq.data(), act, uu_v.data());
    for (std::int64_t r = 0; r < out; ++r) {
      for (std::int64_t s = 0; s < in; ++s) {
        const std::int64_t j = r * in + s;
        chunk_m2[j] = detail::chunk_slot_centred_sum(delta_mean[r], act_mean[s], c[j], u_sq_sum[r],
                                                     v_sq_sum[s], uu_vv[j], u_vv[j], uu_v[j], dm);
      }
      if (bias) chunk_m2[out * in + r] = u_sq_sum[r];
    }
  }

  // Only now turn C into the chunk mean: δ̄āᵀ + C, then the bias part δ̄.
  for (std::int64_t r = 0; r < out; ++r) {
    for (std::int64_t s = 0; s < in; ++s) c[r * in + s] += delta_mean[r] * act_mean[s];
  }
  if (bias) std::copy(delta_mean.begin(), delta_mean.end(), chunk_mean.begin() + out * in);

  moments.merge(m, chunk_mean, chunk_m2_total, chunk_m2, rows.sum_norm_sq);
}


double noise_scale(double trace_cov, double grad_norm_sq) {
  return grad_norm_sq > 0 ? trace_cov / grad_norm_sq : std::numeric_limits<double>::infinity();
}

}  // namespace

void check_profile_inputs(const Model& model, const DataSource& data, const ProfileOptions& options) {
  if (options.chunk_rows < 1) {
    throw InputError("--chunk-rows must be at least 1; got " + std::to_string(options.chunk_rows));
  }
  model.validate();
  const std::int64_t n = data.whole_samples();
  if (n < 2) {
    throw InputError("the data has " + std::to_string(n) +
                     " sample(s); the gradient covariance needs at least 2");
  }
  if (data.num_features() != model.input_dim()) {
    throw InputError("the data has " + std::to_string(data.num_features()) +
                     " features but the first layer takes " + std::to_string(model.input_dim()) +
                     " inputs");
  }
  const std::int64_t k = model.output_dim();
  if (loss_targets(options.loss) == TargetKind::real) {
    if (data.target_kind() != TargetKind::real) {
      throw InputError(loss_summary(options.loss) + " (" + loss_name(options.loss) +
                       ") needs real targets; the data carries class labels");
    }
    if (data.num_targets() != k) {
      throw InputError("the targets have " + std::to_string(data.num_targets()) +
                       " columns but the last layer has " + std::to_string(k) + " outputs");
    }
  } else {
    if (data.target_kind() != TargetKind::labels) {
      throw InputError(loss_summary(options.loss) + " (" + loss_name(options.loss) +
                       ") needs integer class labels; the data carries real targets");
    }
    if (data.num_targets() > k) {
      throw InputError("the labels name " + std::to_string(data.num_targets()) +
                       " classes but the last layer has " + std::to_string(k) + " outputs");
    }
  }
}

namespace {

/// One thread's share of the pass: its own chunk buffers and running moments.
class Worker {
 public:
  Worker(const Model& model, const ProfileOptions& options, std::int64_t chunk)
      : model_(model), options_(options), pass_(model, options.loss, chunk),
        layer_moments_(static_cast<std::size_t>(model.num_layers())) {
    if (options.param_stats) {
      std::int64_t widest = model.input_dim();
      for (const Layer& layer : model.layers) widest = std::max(widest, layer.out);
      squares_.u_sq.resize(static_cast<std::size_t>(chunk * widest));
      squares_.v_sq.resize(static_cast<std::size_t>(chunk * widest));
    }
  }

  /// Rows [first, first + m) of `data`, merged into this worker's moments.
  void process(const DataSource& data, std::int64_t first, std::int64_t m) {
    const detail::ChunkView& view = pass_.run(data, first, m);
    for (std::int64_t l = 0; l < model_.num_layers(); ++l) {
      // Centred inputs go to the layer's scratch (the input itself for l ≥ 1).
      chunk_layer_stats(model_.layers[l], view.errors[l], view.inputs[l], pass_.scratch_input(l), m,
                        options_.param_stats, squares_, layer_moments_[l]);
    }
    // Loss: centred within the chunk, then merged like the gradients.
    double loss_sum = 0;
    for (std::int64_t i = 0; i < m; ++i) loss_sum += view.losses[i];
    const double loss_mean = loss_sum / static_cast<double>(m);
    double loss_m2 = 0;
    for (std::int64_t i = 0; i < m; ++i) {
      const double e = view.losses[i] - loss_mean;
      loss_m2 += e * e;
    }
    loss_moments_.merge(m, {loss_mean}, loss_m2, {}, 0.0);
  }

  /// Folds another worker's moments (the rows after this one's) into this one.
  void merge(const Worker& later) {
    for (std::size_t l = 0; l < layer_moments_.size(); ++l) {
      const Moments& other = later.layer_moments_[l];
      if (other.count > 0) {
        layer_moments_[l].merge(other.count, other.mean, other.m2_total, other.m2, other.sum_norm_sq);
      }
    }
    const Moments& loss = later.loss_moments_;
    if (loss.count > 0) loss_moments_.merge(loss.count, loss.mean, loss.m2_total, {}, 0.0);
  }

  const std::vector<Moments>& layer_moments() const { return layer_moments_; }
  const Moments& loss_moments() const { return loss_moments_; }

 private:
  const Model& model_;
  const ProfileOptions& options_;
  detail::ChunkForward pass_;
  SquareBuffers squares_;
  std::vector<Moments> layer_moments_;
  Moments loss_moments_;
};

using detail::SingleThreadedBlas;

}  // namespace

// Parallelism is over chunks: each of T threads takes a contiguous run of
// chunks with its own buffers and single-threaded BLAS, and the threads'
// moments are merged in order at the end. On few cores this beats threading
// each product and each row loop, whose thread pools (OpenMP's and
// OpenBLAS's) spin against each other; and the result depends only on the
// data, the chunk size and T, so it is bit-identical run to run.
Profile profile_cpu(const Model& model, const DataSource& data, const ProfileOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  check_profile_inputs(model, data, options);

  const std::int64_t n = data.num_samples();
  const std::int64_t num_layers = model.num_layers();
  const std::int64_t chunk = std::min(options.chunk_rows, n);
  const std::int64_t chunks = detail::ceil_div(n, chunk);
  const auto hardware = static_cast<std::int64_t>(std::max(1u, std::thread::hardware_concurrency()));
  const std::int64_t threads =
      std::min(options.threads > 0 ? static_cast<std::int64_t>(options.threads) : hardware, chunks);
  const std::int64_t chunks_per_thread = detail::ceil_div(chunks, threads);

  std::vector<Worker> workers;
  workers.reserve(static_cast<std::size_t>(threads));
  for (std::int64_t t = 0; t < threads; ++t) workers.emplace_back(model, options, chunk);
  std::vector<std::exception_ptr> failures(static_cast<std::size_t>(threads));
  const auto run_worker = [&](std::int64_t t) {
    try {
      const std::int64_t first_row = t * chunks_per_thread * chunk;
      const std::int64_t last_row = std::min(n, (t + 1) * chunks_per_thread * chunk);
      for (std::int64_t first = first_row; first < last_row; first += chunk) {
        workers[t].process(data, first, std::min(chunk, last_row - first));
      }
    } catch (...) {
      failures[t] = std::current_exception();
    }
  };
  {
    const SingleThreadedBlas blas(threads > 1);
    std::vector<std::thread> helpers;
    for (std::int64_t t = 1; t < threads; ++t) helpers.emplace_back(run_worker, t);
    run_worker(0);
    for (std::thread& helper : helpers) helper.join();
  }
  // The earliest rows' failure is the one a serial pass would have met first.
  for (const std::exception_ptr& failure : failures) {
    if (failure) std::rethrow_exception(failure);
  }
  for (std::int64_t t = 1; t < threads; ++t) workers[0].merge(workers[t]);
  const std::vector<Moments>& layer_moments = workers[0].layer_moments();
  const Moments& loss_moments = workers[0].loss_moments();

  Profile result;
  result.n = n;
  result.num_params = model.num_params();
  result.loss = loss_moments.mean[0];
  const double inv_n = 1.0 / static_cast<double>(n);
  result.loss_var = loss_moments.m2_total * inv_n;
  result.param_mean.reserve(static_cast<std::size_t>(result.num_params));
  if (options.param_stats) result.param_var.reserve(static_cast<std::size_t>(result.num_params));
  for (std::int64_t l = 0; l < num_layers; ++l) {
    const Moments& mom = layer_moments[l];
    LayerProfile lp;
    lp.name = Model::layer_name(l);
    lp.num_params = model.layers[l].num_params();
    for (double g : mom.mean) lp.grad_norm_sq += g * g;
    lp.trace_cov = mom.m2_total * inv_n;
    lp.mean_sample_grad_norm_sq = mom.sum_norm_sq * inv_n;
    lp.noise_scale_simple = noise_scale(lp.trace_cov, lp.grad_norm_sq);
    result.grad_norm_sq += lp.grad_norm_sq;
    result.trace_cov += lp.trace_cov;
    result.mean_sample_grad_norm_sq += lp.mean_sample_grad_norm_sq;
    result.param_mean.insert(result.param_mean.end(), mom.mean.begin(), mom.mean.end());
    for (double v : mom.m2) result.param_var.push_back(v * inv_n);
    result.layers.push_back(std::move(lp));
  }
  result.noise_scale_simple = noise_scale(result.trace_cov, result.grad_norm_sq);
  result.device = "cpu";
  result.elapsed_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace gradnoise
