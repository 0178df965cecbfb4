//! `selfspec adapters merge`: several LoRA adapters of one base model combined into one adapter,
//! exactly as PEFT's `LoraModel.add_weighted_adapter` combines them (checked against PEFT in
//! tests/combine.rs with adapters and merges made by scripts/make_combine_fixture.py).
//!
//! With weights wᵢ and PEFT's scalings sᵢ (αᵢ/rᵢ, or αᵢ/√rᵢ with rsLoRA), per projection:
//! - `linear` (equal ranks): A = Σ sign(wᵢsᵢ)·√|wᵢsᵢ|·Aᵢ and B = Σ √|wᵢsᵢ|·Bᵢ — the sum of the
//!   factors, not of the products, so B·A is only an approximation of Σ wᵢsᵢ·BᵢAᵢ;
//! - `cat`: A = [w₁s₁A₁; w₂s₂A₂; …] stacked by rows and B = [B₁ B₂ …] by columns, rank Σ rᵢ:
//!   B·A = Σ wᵢsᵢ·BᵢAᵢ exactly;
//! - `svd`: ΔW = Σ wᵢsᵢ·BᵢAᵢ, and its best rank-R approximation (R = --rank, else the largest
//!   rᵢ): B = U_R·diag(S_R), A = V_Rᵀ.
//!
//! The merged adapter has r = the new rank and lora_alpha = r (scaling 1), as PEFT writes it.
//! A projection that only some adapters target gets only their terms. The SVD is exact without
//! forming ΔW: with the stacked factors Bc = [B₁ B₂ …] (out × K) and Ac = [w₁s₁A₁; …] (K × in),
//! ΔW = Bc·Ac = Q_b·(R_b·R_aᵀ)·Q_aᵀ from thin QRs Bc = Q_b·R_b and Acᵀ = Q_a·R_a, so only the
//! K × K middle needs an SVD (one-sided Jacobi). Singular vectors are unique only up to sign
//! (and within repeated singular values), so an svd merge equals PEFT's in B·A, not factor by
//! factor.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{Device, Tensor};

use super::adapter::{tensor_name, AdapterConfig, Targets};

/// How the adapters are combined (PEFT's `combination_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Linear,
    Cat,
    Svd,
}

/// What a merge wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub rank: usize,
    pub projections: usize,
    /// The method used (PEFT uses linear for a single adapter, whatever was asked).
    pub method: Method,
}

/// One adapter read from its folder: its config and its (A, B) per projection, in f64.
pub struct Loaded {
    dir: PathBuf,
    cfg: AdapterConfig,
    factors: BTreeMap<String, (Mat, Mat)>,
}

/// Reads the adapter in `dir`.
pub fn read(dir: &Path) -> anyhow::Result<Loaded> {
    let cfg = AdapterConfig::read(dir)?;
    let path = dir.join("adapter_model.safetensors");
    let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&path, &Device::Cpu)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut factors = BTreeMap::new();
    for key in tensors.keys().filter(|k| k.ends_with(".lora_A.weight")) {
        let linear = key.trim_start_matches("base_model.model.").trim_end_matches(".lora_A.weight").to_string();
        let b_key = tensor_name(&linear, 'B');
        let b = tensors.get(&b_key).with_context(|| format!("{}: tensor {b_key} is missing", path.display()))?;
        let (a, b) = (Mat::from_tensor(&tensors[key])?, Mat::from_tensor(b)?);
        for (name, m) in [(key.as_str(), &a), (b_key.as_str(), &b)] {
            anyhow::ensure!(
                m.data.iter().all(|x| x.is_finite()),
                "{}: tensor {name} holds NaN or infinite values (a training run that diverged?); \
                 nothing was merged",
                path.display()
            );
        }
        anyhow::ensure!(
            a.rows == cfg.r && b.cols == cfg.r,
            "{}: {key} is {}×{} and its B {}×{}, but r is {}",
            path.display(),
            a.rows,
            a.cols,
            b.rows,
            b.cols,
            cfg.r
        );
        factors.insert(linear, (a, b));
    }
    anyhow::ensure!(!factors.is_empty(), "{}: no LoRA tensors", path.display());
    Ok(Loaded { dir: dir.to_path_buf(), cfg, factors })
}

/// Merges the adapters in `dirs` with `weights` by `method` into a new PEFT adapter in `out`.
pub fn merge(
    dirs: &[PathBuf],
    weights: &[f64],
    method: Method,
    rank: Option<usize>,
    out: &Path,
) -> anyhow::Result<Merged> {
    anyhow::ensure!(!dirs.is_empty(), "name at least one adapter to merge");
    anyhow::ensure!(
        weights.len() == dirs.len(),
        "{} weights for {} adapters: give one weight per adapter",
        weights.len(),
        dirs.len()
    );
    let adapters: Vec<Loaded> = dirs.iter().map(|d| read(d)).collect::<anyhow::Result<_>>()?;
    merge_loaded(&adapters, weights, method, rank, out)
}

/// [`merge`] of adapters already read.
pub fn merge_loaded(
    adapters: &[Loaded],
    weights: &[f64],
    method: Method,
    rank: Option<usize>,
    out: &Path,
) -> anyhow::Result<Merged> {
    anyhow::ensure!(weights.len() == adapters.len(), "one weight per adapter");
    anyhow::ensure!(weights.iter().all(|w| w.is_finite()), "every weight must be a finite number");
    // PEFT merges a single adapter linearly, whatever was asked.
    let method = if adapters.len() == 1 { Method::Linear } else { method };
    let ranks: Vec<usize> = adapters.iter().map(|a| a.cfg.r).collect();
    let new_rank = match method {
        Method::Linear => {
            if let Some(other) = adapters.iter().find(|a| a.cfg.r != ranks[0]) {
                anyhow::bail!(
                    "linear merging needs equal ranks, but {} has r {} and {} has r {}; use --method cat or svd",
                    adapters[0].dir.display(),
                    ranks[0],
                    other.dir.display(),
                    other.cfg.r
                );
            }
            ranks[0]
        }
        Method::Cat => ranks.iter().sum(),
        Method::Svd => rank.unwrap_or_else(|| ranks.iter().copied().max().unwrap_or(1)),
    };
    anyhow::ensure!(new_rank >= 1, "--rank must be at least 1");
    if rank.is_some() && method != Method::Svd {
        anyhow::bail!("--rank is for --method svd (linear keeps the rank, cat sums them)");
    }
    if method == Method::Svd {
        // A rank past a projection's sizes adds only zeros (and memory: r × (in + out) each).
        let smallest =
            adapters.iter().flat_map(|a| a.factors.iter().map(|(n, (fa, fb))| (fa.cols.min(fb.rows), n))).min();
        if let Some((most, name)) = smallest {
            anyhow::ensure!(
                new_rank <= most,
                "--rank {new_rank} is out of range: {name} has {most} as its smaller size, so the rank takes 1 to {most}"
            );
        }
    }
    let linears: BTreeSet<&String> = adapters.iter().flat_map(|a| a.factors.keys()).collect();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for linear in &linears {
        // (wᵢ·sᵢ, Aᵢ, Bᵢ) of each adapter targeting this projection.
        let terms: Vec<(f64, &Mat, &Mat)> = adapters
            .iter()
            .zip(weights)
            .filter_map(|(a, w)| a.factors.get(*linear).map(|(fa, fb)| (w * a.cfg.scale(), fa, fb)))
            .collect();
        let (inf, outf) = (terms[0].1.cols, terms[0].2.rows);
        for (i, (_, fa, fb)) in terms.iter().enumerate() {
            anyhow::ensure!(
                fa.cols == inf && fb.rows == outf,
                "{linear}: adapter {} has another shape ({}→{}) than the first ({}→{}); are they for one base model?",
                i + 1,
                fa.cols,
                fb.rows,
                inf,
                outf
            );
        }
        let (a, b) = match method {
            Method::Linear => {
                let mut a = Mat::zeros(new_rank, inf);
                let mut b = Mat::zeros(outf, new_rank);
                for (ws, fa, fb) in &terms {
                    let root = ws.abs().sqrt();
                    a.add_scaled(fa, root * ws.signum());
                    b.add_scaled(fb, root);
                }
                (a, b)
            }
            Method::Cat => stack(&terms, new_rank),
            Method::Svd => {
                let (ac, bc) = stack(&terms, terms.iter().map(|t| t.1.rows).sum());
                truncated_svd(&bc, &ac.transpose(), new_rank)
            }
        };
        tensors.insert(tensor_name(linear, 'A'), a.to_tensor()?);
        tensors.insert(tensor_name(linear, 'B'), b.to_tensor()?);
    }
    write(out, &adapters[0].cfg, new_rank, &linears, &tensors)?;
    Ok(Merged { rank: new_rank, projections: linears.len(), method })
}

/// Writes an adapter of rank `rank` with scaling 1 (lora_alpha = r, as PEFT writes merges).
fn write(
    out: &Path,
    first: &AdapterConfig,
    rank: usize,
    linears: &BTreeSet<&String>,
    tensors: &HashMap<String, Tensor>,
) -> anyhow::Result<()> {
    let mut cfg = first.clone();
    cfg.r = rank;
    cfg.lora_alpha = rank as f64;
    cfg.use_rslora = false;
    let names: BTreeSet<String> =
        linears.iter().map(|l| l.rsplit('.').next().unwrap_or(l.as_str()).to_string()).collect();
    cfg.target_modules = Targets::List(names.into_iter().collect());
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let tmp = out.join("adapter_model.safetensors.partial");
    candle_core::safetensors::save(tensors, &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, out.join("adapter_model.safetensors"))?;
    crate::fsutil::atomic_write(&out.join("adapter_config.json"), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
    Ok(())
}

/// Why the (A, B) line between `x` and `y` cannot be drawn (unequal ranks, other projections or
/// shapes); None when it can.
pub fn factor_line_refused(x: &Loaded, y: &Loaded) -> Option<String> {
    if x.cfg.r != y.cfg.r {
        return Some(format!(
            "{} has r {} and {} r {}: (A, B) space needs equal ranks",
            x.dir.display(),
            x.cfg.r,
            y.dir.display(),
            y.cfg.r
        ));
    }
    if !x.factors.keys().eq(y.factors.keys()) {
        return Some(format!("{} and {} adapt different projections", x.dir.display(), y.dir.display()));
    }
    let shapes = |(a, b): &(Mat, Mat)| (a.cols, b.rows);
    x.factors
        .iter()
        .find(|(l, f)| shapes(f) != shapes(&y.factors[*l]))
        .map(|(l, _)| format!("{l}: the two adapters' shapes differ"))
}

/// The point θ(α) = (1−α)·θ_A + α·θ_B between two adapters of equal rank and projections, in
/// (A, B) space with each adapter's scaling folded into its B (so the result has scaling 1):
/// A(α) = (1−α)·A_a + α·A_b and B(α) = (1−α)·s_a·B_a + α·s_b·B_b. Written to `out`.
pub fn interpolate_factors(x: &Loaded, y: &Loaded, alpha: f64, out: &Path) -> anyhow::Result<()> {
    if let Some(why) = factor_line_refused(x, y) {
        anyhow::bail!("{why}");
    }
    let (sx, sy) = (x.cfg.scale(), y.cfg.scale());
    let mut tensors = HashMap::new();
    for (linear, (xa, xb)) in &x.factors {
        let (ya, yb) = &y.factors[linear];
        let mut fa = Mat::zeros(xa.rows, xa.cols);
        fa.add_scaled(xa, 1.0 - alpha);
        fa.add_scaled(ya, alpha);
        let mut fb = Mat::zeros(xb.rows, xb.cols);
        fb.add_scaled(xb, (1.0 - alpha) * sx);
        fb.add_scaled(yb, alpha * sy);
        tensors.insert(tensor_name(linear, 'A'), fa.to_tensor()?);
        tensors.insert(tensor_name(linear, 'B'), fb.to_tensor()?);
    }
    let linears: BTreeSet<&String> = x.factors.keys().collect();
    write(out, &x.cfg, x.cfg.r, &linears, &tensors)
}

/// The terms' factors stacked, `rank` wide (zero-padded): A = [w₁s₁A₁; w₂s₂A₂; …] by rows and
/// B = [B₁ B₂ …] by columns, so that B·A = Σ wᵢsᵢ·BᵢAᵢ.
fn stack(terms: &[(f64, &Mat, &Mat)], rank: usize) -> (Mat, Mat) {
    let (inf, outf) = (terms[0].1.cols, terms[0].2.rows);
    let mut a = Mat::zeros(rank, inf);
    let mut b = Mat::zeros(outf, rank);
    let mut at = 0;
    for (ws, fa, fb) in terms {
        for r in 0..fa.rows {
            for c in 0..inf {
                a.set(at + r, c, ws * fa.get(r, c));
            }
            for o in 0..outf {
                b.set(o, at + r, fb.get(o, r));
            }
        }
        at += fa.rows;
    }
    (a, b)
}

/// The best rank-`k` factors (A k×in, B out×k) of Bc·Acᵀ, from thin QRs and a small SVD.
fn truncated_svd(bc: &Mat, ac_t: &Mat, k: usize) -> (Mat, Mat) {
    let (qb, rb) = thin_qr(bc);
    let (qa, ra) = thin_qr(ac_t);
    // The K×K middle M = R_b·R_aᵀ; ΔW = Q_b·M·Q_aᵀ.
    let middle = rb.matmul(&ra.transpose());
    let (u, s, v) = jacobi_svd(&middle);
    let (big_u, big_v) = (qb.matmul(&u), qa.matmul(&v));
    let (outf, inf) = (bc.rows, ac_t.rows);
    let mut a = Mat::zeros(k, inf);
    let mut b = Mat::zeros(outf, k);
    for (j, &sj) in s.iter().enumerate().take(k) {
        for o in 0..outf {
            b.set(o, j, big_u.get(o, j) * sj);
        }
        for c in 0..inf {
            a.set(j, c, big_v.get(c, j));
        }
    }
    (a, b)
}

/// A dense row-major f64 matrix: enough linear algebra for merging adapters.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Mat {
        Mat { rows, cols, data: vec![0.0; rows * cols] }
    }

    fn from_tensor(t: &Tensor) -> anyhow::Result<Mat> {
        let (rows, cols) = t.dims2()?;
        let data = t.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        Ok(Mat { rows, cols, data })
    }

    fn to_tensor(&self) -> anyhow::Result<Tensor> {
        let data: Vec<f32> = self.data.iter().map(|&x| x as f32).collect();
        Ok(Tensor::from_vec(data, (self.rows, self.cols), &Device::Cpu)?)
    }

    pub fn get(&self, r: usize, c: usize) -> f64 {
        self.data[r * self.cols + c]
    }

    fn set(&mut self, r: usize, c: usize, v: f64) {
        self.data[r * self.cols + c] = v;
    }

    fn add_scaled(&mut self, other: &Mat, by: f64) {
        for (x, y) in self.data.iter_mut().zip(&other.data) {
            *x += by * y;
        }
    }

    pub fn transpose(&self) -> Mat {
        let mut t = Mat::zeros(self.cols, self.rows);
        for r in 0..self.rows {
            for c in 0..self.cols {
                t.set(c, r, self.get(r, c));
            }
        }
        t
    }

    pub fn matmul(&self, other: &Mat) -> Mat {
        assert_eq!(self.cols, other.rows, "matmul shapes");
        let mut out = Mat::zeros(self.rows, other.cols);
        for r in 0..self.rows {
            for k in 0..self.cols {
                let x = self.get(r, k);
                if x == 0.0 {
                    continue;
                }
                let row = &other.data[k * other.cols..(k + 1) * other.cols];
                for (o, y) in out.data[r * other.cols..(r + 1) * other.cols].iter_mut().zip(row) {
                    *o += x * y;
                }
            }
        }
        out
    }
}

/// Thin QR of an m×k matrix (m ≥ k not required) by modified Gram–Schmidt, applied twice for
/// orthogonality; a column dependent on the earlier ones gets a zero Q column and R row.
fn thin_qr(m: &Mat) -> (Mat, Mat) {
    let (rows, k) = (m.rows, m.cols);
    let mut q = m.clone();
    let mut r = Mat::zeros(k, k);
    let scale = m.data.iter().fold(0.0f64, |a, x| a.max(x.abs())).max(f64::MIN_POSITIVE);
    for j in 0..k {
        for _pass in 0..2 {
            for i in 0..j {
                let dot: f64 = (0..rows).map(|x| q.get(x, i) * q.get(x, j)).sum();
                r.set(i, j, r.get(i, j) + dot);
                for x in 0..rows {
                    q.set(x, j, q.get(x, j) - dot * q.get(x, i));
                }
            }
        }
        let norm = (0..rows).map(|x| q.get(x, j).powi(2)).sum::<f64>().sqrt();
        if norm <= 1e-12 * scale * (rows as f64).sqrt() {
            r.set(j, j, 0.0);
            for x in 0..rows {
                q.set(x, j, 0.0);
            }
        } else {
            r.set(j, j, norm);
            for x in 0..rows {
                q.set(x, j, q.get(x, j) / norm);
            }
        }
    }
    (q, r)
}

/// SVD of a small square matrix by one-sided Jacobi: (U, singular values descending, V) with
/// M = U·diag(S)·Vᵀ.
fn jacobi_svd(m: &Mat) -> (Mat, Vec<f64>, Mat) {
    let n = m.cols;
    let mut a = m.clone();
    let mut v = Mat::zeros(n, n);
    for i in 0..n {
        v.set(i, i, 1.0);
    }
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (mut alpha, mut beta, mut gamma) = (0.0, 0.0, 0.0);
                for r in 0..a.rows {
                    let (x, y) = (a.get(r, p), a.get(r, q));
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if gamma.abs() <= 1e-15 * (alpha * beta).sqrt() || gamma == 0.0 {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let t = if zeta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for r in 0..a.rows {
                    let (x, y) = (a.get(r, p), a.get(r, q));
                    a.set(r, p, c * x - s * y);
                    a.set(r, q, s * x + c * y);
                }
                for r in 0..n {
                    let (x, y) = (v.get(r, p), v.get(r, q));
                    v.set(r, p, c * x - s * y);
                    v.set(r, q, s * x + c * y);
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let norms: Vec<f64> = (0..n).map(|j| (0..a.rows).map(|r| a.get(r, j).powi(2)).sum::<f64>().sqrt()).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| norms[y].total_cmp(&norms[x]));
    let mut u = Mat::zeros(a.rows, n);
    let mut vs = Mat::zeros(n, n);
    let mut s = Vec::with_capacity(n);
    for (j, &src) in order.iter().enumerate() {
        s.push(norms[src]);
        for r in 0..a.rows {
            u.set(r, j, if norms[src] > 0.0 { a.get(r, src) / norms[src] } else { 0.0 });
        }
        for r in 0..n {
            vs.set(r, j, v.get(r, src));
        }
    }
    (u, s, vs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(rows: usize, cols: usize, seed: u64) -> Mat {
        let mut rng = crate::rng::Rng::new(seed);
        Mat { rows, cols, data: (0..rows * cols).map(|_| rng.next_f64() * 2.0 - 1.0).collect() }
    }

    #[test]
    fn the_truncated_svd_of_a_low_rank_product_is_exact_and_ordered() {
        let (bc, ac_t) = (random(12, 5, 1), random(9, 5, 2));
        let full = bc.matmul(&ac_t.transpose());
        let (a, b) = truncated_svd(&bc, &ac_t, 5);
        let back = b.matmul(&a);
        for (x, y) in back.data.iter().zip(&full.data) {
            assert!((x - y).abs() < 1e-10, "{x} vs {y}");
        }
        // Rows of A are orthonormal, and the columns of B shrink.
        let gram = a.matmul(&a.transpose());
        for i in 0..5 {
            for j in 0..5 {
                assert!((gram.get(i, j) - if i == j { 1.0 } else { 0.0 }).abs() < 1e-10);
            }
        }
        let norms: Vec<f64> = (0..5).map(|j| (0..12).map(|o| b.get(o, j).powi(2)).sum::<f64>().sqrt()).collect();
        assert!(norms.windows(2).all(|w| w[0] >= w[1]), "{norms:?}");
        // Rank 2: the error is the third singular value's share, no more (Eckart–Young).
        let (a2, b2) = truncated_svd(&bc, &ac_t, 2);
        let err: f64 = b2.matmul(&a2).data.iter().zip(&full.data).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
        let tail: f64 = norms[2..].iter().map(|s| s * s).sum();
        assert!((err - tail).abs() < 1e-8 * tail.max(1.0), "{err} vs {tail}");
    }

    #[test]
    fn dependent_columns_do_not_break_the_qr() {
        let mut m = random(6, 3, 3);
        for r in 0..6 {
            let x = m.get(r, 0) * 2.0;
            m.set(r, 2, x);
        }
        let (q, r) = thin_qr(&m);
        let back = q.matmul(&r);
        for (x, y) in back.data.iter().zip(&m.data) {
            assert!((x - y).abs() < 1e-12);
        }
        assert_eq!(r.get(2, 2), 0.0);
    }
}
