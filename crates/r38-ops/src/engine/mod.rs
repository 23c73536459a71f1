//! A faster CPU convolution for ResNet-38's shapes, plugged into candle as a [`CustomOp2`].
//!
//! [`conv2d`] computes exactly what [`crate::Conv2d`] computes (the authors' "same" padding,
//! dilation forced to 1 for 1x1 kernels, optional bias) and picks one of two paths:
//!
//! - **fast** ([`Engine::Fast`]): on f32 CPU tensors, Winograd F(2x2,3x3) or F(4x4,3x3)
//!   ([`winograd`]) for 3x3 stride-1 convolutions of any dilation, tiled im2col + GEMM
//!   ([`kernel`]) for the rest
//!   (stem, stride 2, 1x1). When the input or weight is tracked by candle's autograd
//!   (training), the same kernels run with their own backward pass ([`backward`]: GEMMs and
//!   col2im, exact for every input size; both gradients of a 3x3 stride-1 convolution through
//!   [`winograd`]). Results differ from candle's by ~1e-6 (relative to
//!   the largest output).
//! - **gemm** ([`Engine::Gemm`]): the im2col + GEMM kernel for every shape (for comparisons).
//! - **exact** ([`Engine::Exact`]): candle's own `conv2d` and backward (through
//!   [`crate::conv_grad::conv2d_exact`]); always used on other devices and other dtypes.
//!
//! The choice is the caller's, per thread and scope ([`with_engine`]); the default is `fast`.
//! The binaries map `--engine` / `R38_ENGINE` onto it.
//!
//! In inference a residual unit's passes over its maps fold into its convolutions on the fast
//! path: a pre-activation is applied as Winograd's input transform reads ([`conv2d_after`]),
//! an identity shortcut added as the last convolution writes ([`conv2d_plus`]), a projection
//! accumulated into the branch output ([`conv2d_add`]). The first two keep the bits of the
//! separate passes.

pub mod allocator;
pub mod backward;
pub mod kernel;
mod output;
pub mod pre_activation;
#[cfg(target_arch = "x86_64")]
mod product;
pub mod winograd;

use crate::conv::ConvSpec;
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, TensorId,
};
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex, OnceLock};

pub use kernel::Geometry;
use output::Output;

/// Which convolution path [`conv2d`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// candle's `conv2d` (reference; supports autograd and every device).
    Exact,
    /// The r38 im2col + GEMM kernel for every shape (no Winograd); for comparisons.
    Gemm,
    /// The r38 CPU kernels: Winograd F(2x2,3x3) / F(4x4,3x3) for 3x3 stride-1 convolutions,
    /// im2col + GEMM for the rest (falls back to `Exact` where it does not apply).
    Fast,
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "exact" | "candle" => Ok(Engine::Exact),
            "fast" | "r38" => Ok(Engine::Fast),
            "gemm" | "im2col" => Ok(Engine::Gemm),
            other => Err(format!(
                "unknown engine {other:?} (expected exact, gemm or fast)"
            )),
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Exact => "exact",
            Engine::Gemm => "gemm",
            Engine::Fast => "fast",
        })
    }
}

thread_local! {
    static SCOPED: std::cell::Cell<Option<Engine>> = const { std::cell::Cell::new(None) };
    static KEEP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The engine of the calling thread: the innermost [`with_engine`] around it, else
/// [`Engine::Fast`].
///
/// A value, not a process setting, so that two users of the library (or two tests in one
/// binary) can run different engines side by side.
pub fn engine() -> Engine {
    SCOPED.with(|e| e.get()).unwrap_or(Engine::Fast)
}

/// Run `f` with `engine` for every convolution and pre-activation it starts on this thread.
///
/// ```
/// use r38_ops::engine::{engine, with_engine, Engine};
/// assert_eq!(engine(), Engine::Fast);
/// assert_eq!(with_engine(Engine::Exact, engine), Engine::Exact);
/// assert_eq!(engine(), Engine::Fast);
/// ```
pub fn with_engine<T>(engine: Engine, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Engine>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPED.with(|e| e.set(self.0));
        }
    }
    let _restore = Restore(SCOPED.with(|e| e.replace(Some(engine))));
    f()
}

/// Run `f` with every [`crate::Conv2d`] it calls on this thread keeping the Winograd transforms
/// of its constant weight ([`KeptKernels`]) for later passes: for inference that runs the same
/// network many times (several scales and flips, a data set, sliding windows). It costs
/// memory: 1.8x the 3x3 weights under F(2x2), 4x under F(4x4), held as long as the layers.
///
/// Weights that autograd tracks (candle `Var`s being trained) are never kept.
pub fn with_kept_kernels<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            KEEP.with(|k| k.set(self.0));
        }
    }
    let _restore = Restore(KEEP.with(|k| k.replace(true)));
    f()
}

/// Whether the calling thread is inside [`with_kept_kernels`].
pub fn keeps_kernels() -> bool {
    KEEP.with(|k| k.get())
}

/// The Winograd-transformed kernels of one constant weight, made on its first use under each
/// block size and kept (a [`crate::Conv2d`] holds one for its weight). Bound to the first
/// weight tensor it serves: any other tensor is refused, so kernels are never served for a
/// weight they were not made from. Candle tensors are immutable except for `Var`s, which
/// autograd tracks and [`conv2d_kept`] never keeps; a plain tensor that shares a trained
/// `Var`'s storage (`Var::detach`) must not be given one.
#[derive(Default)]
pub struct KeptKernels {
    weight: OnceLock<TensorId>,
    /// F(2x2), F(3x3) and F(4x4).
    blocks: [Mutex<Option<Arc<winograd::Transformed>>>; 3],
}

impl std::fmt::Debug for KeptKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeptKernels({} bytes)", self.bytes())
    }
}

impl KeptKernels {
    /// Bytes of transformed kernels held.
    pub fn bytes(&self) -> usize {
        self.blocks
            .iter()
            .filter_map(|b| b.lock().ok()?.as_ref().map(|u| u.bytes()))
            .sum()
    }

    /// The kernels of `weight` for blocks of edge `m`, made now if they are not kept yet.
    fn get(&self, weight: &Tensor, g: &Geometry, m: usize) -> Result<Arc<winograd::Transformed>> {
        if *self.weight.get_or_init(|| weight.id()) != weight.id() {
            candle_core::bail!("engine::KeptKernels: kept for another weight tensor");
        }
        let mut slot = self.blocks[m - 2]
            .lock()
            .map_err(|_| candle_core::Error::Msg("engine::KeptKernels: poisoned".into()))?;
        if let Some(u) = slot.as_ref() {
            return Ok(u.clone());
        }
        let w = weight.flatten_all()?.to_vec1::<f32>()?;
        let u = Arc::new(winograd::Transformed::new(g, m, &w));
        *slot = Some(u.clone());
        Ok(u)
    }
}

/// [`conv2d`] with the Winograd kernels of `weight` kept in `kept` across calls (see
/// [`with_kept_kernels`]): on the fast engine, for a constant weight, every 3x3 stride-1
/// convolution goes through Winograd, small maps included ([`winograd::applies_kept`]).
/// Anything else computes as [`conv2d`] does.
pub fn conv2d_kept(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    spec: &ConvSpec,
    kept: &KeptKernels,
) -> Result<Tensor> {
    let engine = engine();
    if engine == Engine::Fast && fast_applies(x, weight, bias) {
        return r38_conv2d(x, weight, bias, spec, true, Some(kept), None);
    }
    conv2d_with(engine, x, weight, bias, spec)
}

/// Convolution of an NCHW tensor with an OIHW weight as [`crate::Conv2d`] defines it, through
/// the engine chosen by [`engine`].
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    spec: &ConvSpec,
) -> Result<Tensor> {
    conv2d_with(engine(), x, weight, bias, spec)
}

/// [`conv2d`] with an explicit engine (for tests and benchmarks).
pub fn conv2d_with(
    engine: Engine,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    spec: &ConvSpec,
) -> Result<Tensor> {
    if engine != Engine::Exact && fast_applies(x, weight, bias) {
        return r38_conv2d(x, weight, bias, spec, engine == Engine::Fast, None, None);
    }
    if engine != Engine::Exact && on_cpu_f32(x) && on_cpu_f32(weight) {
        return trainable_conv2d(x, weight, bias, spec, engine == Engine::Fast);
    }
    exact_conv2d(x, weight, bias, spec)
}

/// `shortcut + conv(x, weight)` (no bias) in a fresh tensor, as a residual unit adds its
/// identity shortcut onto its last branch: on the fast path each output is written with the
/// shortcut's value added (the same bits as adding afterwards), without a pass or a map of its
/// own. `shortcut` is only read. With `kept`, the Winograd kernels are those of
/// [`conv2d_kept`].
pub fn conv2d_plus(
    x: &Tensor,
    weight: &Tensor,
    spec: &ConvSpec,
    shortcut: &Tensor,
    kept: Option<&KeptKernels>,
) -> Result<Tensor> {
    conv2d_plus_with(engine(), x, weight, spec, shortcut, kept)
}

/// [`conv2d_plus`] with an explicit engine (for tests and benchmarks).
pub fn conv2d_plus_with(
    engine: Engine,
    x: &Tensor,
    weight: &Tensor,
    spec: &ConvSpec,
    shortcut: &Tensor,
    kept: Option<&KeptKernels>,
) -> Result<Tensor> {
    let fast = engine != Engine::Exact
        && !spec.bias
        && fast_applies(x, weight, None)
        && fast_applies(shortcut, weight, None);
    if !fast {
        return shortcut + conv2d_with(engine, x, weight, None, spec)?;
    }
    let kept = kept.filter(|_| engine == Engine::Fast);
    r38_conv2d(
        x,
        weight,
        None,
        spec,
        engine == Engine::Fast,
        kept,
        Some(shortcut),
    )
}

/// `residual + conv(x, weight)` (no bias), as a residual unit's projection shortcut adds onto
/// its branch. On the fast path the convolution is accumulated straight into `residual`'s own
/// storage, so no tensor of the output's size is allocated (at a 1024x2048 frame, level 7's
/// 4096-channel maps are 0.5 GB each): pass a tensor nothing else reads, such as the fresh
/// output of the unit's last branch.
pub fn conv2d_add(
    x: &Tensor,
    weight: &Tensor,
    spec: &ConvSpec,
    residual: Tensor,
) -> Result<Tensor> {
    conv2d_add_with(engine(), x, weight, spec, residual)
}

/// [`conv2d_add`] with an explicit engine (for tests and benchmarks).
pub fn conv2d_add_with(
    engine: Engine,
    x: &Tensor,
    weight: &Tensor,
    spec: &ConvSpec,
    residual: Tensor,
) -> Result<Tensor> {
    let fast = engine != Engine::Exact
        && !spec.bias
        && fast_applies(x, weight, None)
        && fast_applies(&residual, weight, None)
        && residual.is_contiguous();
    let geometry = match fast.then(|| geometry_of(x, weight, spec)) {
        Some(Ok(g))
            if g.valid()
                && residual.dims() == [g.batch, g.out_channels, g.out_height(), g.out_width()] =>
        {
            g
        }
        _ => return conv2d_with(engine, x, weight, None, spec)? + residual,
    };
    residual.inplace_op3(
        &x.contiguous()?,
        &weight.contiguous()?,
        &FastConvAccumulate {
            geometry,
            winograd: engine == Engine::Fast,
        },
    )?;
    Ok(residual)
}

/// `residual += conv(x, w)` in place on the CPU (see [`conv2d_add`]).
struct FastConvAccumulate {
    geometry: Geometry,
    winograd: bool,
}

impl candle_core::InplaceOp3 for FastConvAccumulate {
    fn name(&self) -> &'static str {
        "r38-conv2d-accumulate"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let g = &self.geometry;
        let x = contiguous_f32(s2, l2, "input")?;
        let w = contiguous_f32(s3, l3, "weight")?;
        let out = match (s1, l1.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => &mut v[a..b],
            _ => candle_core::bail!("engine::conv2d_add: the residual must be contiguous f32"),
        };
        if self.winograd && winograd::applies(g) {
            let write = |y: &mut [MaybeUninit<f32>]| {
                let out = Output { y, residual: None };
                winograd::conv2d_into(g, winograd::Input::plain(x), w, None, out)
            };
            // SAFETY: the Winograd path writes every element of its output.
            let y = unsafe { output::written_by(out.len(), write) };
            out.iter_mut().zip(&y).for_each(|(o, v)| *o += v);
        } else {
            kernel::im2col_gemm_accumulate(g, x, w, out);
        }
        Ok(())
    }
}

/// The r38 kernels with their backward pass ([`backward`]): what training on the CPU uses.
/// The bias, if any, is added by candle (its gradient is a plain sum).
pub fn trainable_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    spec: &ConvSpec,
    allow_winograd: bool,
) -> Result<Tensor> {
    let geometry = geometry_of(x, weight, spec)?;
    if !geometry.valid() {
        return exact_conv2d(x, weight, bias, spec);
    }
    let winograd = allow_winograd && winograd::applies(&geometry);
    let y = x.contiguous()?.apply_op2(
        &weight.contiguous()?,
        FastConv {
            geometry,
            bias: None,
            winograd,
            kept: None,
            pre: None,
        },
    )?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
        None => Ok(y),
    }
}

/// candle's own convolution (through [`crate::conv_grad::conv2d_exact`], whose backward is
/// exact for every input size): the reference path, and the one autograd uses.
pub fn exact_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    spec: &ConvSpec,
) -> Result<Tensor> {
    let y = crate::conv_grad::conv2d_exact(
        x,
        weight,
        spec.padding(),
        spec.stride,
        spec.effective_dilation(),
        1,
    )?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
        None => Ok(y),
    }
}

fn on_cpu_f32(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32 && t.rank() == 4
}

fn fast_applies(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> bool {
    let no_grad = |t: &Tensor| !t.track_op();
    on_cpu_f32(x)
        && on_cpu_f32(w)
        && no_grad(x)
        && no_grad(w)
        && bias.is_none_or(|b| {
            matches!(b.device(), Device::Cpu) && b.dtype() == DType::F32 && no_grad(b)
        })
}

fn geometry_of(x: &Tensor, weight: &Tensor, spec: &ConvSpec) -> Result<Geometry> {
    let (n, cin, h, w) = x.dims4()?;
    let (cout, wcin, kh, kw) = weight.dims4()?;
    if wcin != cin || kh != kw || kh != spec.kernel {
        candle_core::bail!(
            "engine::conv2d: input {:?} does not fit weight {:?} / {spec:?}",
            x.dims(),
            weight.dims()
        );
    }
    Ok(Geometry {
        batch: n,
        in_channels: cin,
        height: h,
        width: w,
        out_channels: cout,
        kernel: kh,
        stride: spec.stride,
        dilation: spec.effective_dilation(),
        padding: spec.padding(),
    })
}

/// The fast path, unconditionally (errors on unsupported inputs instead of falling back).
pub fn fast_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    spec: &ConvSpec,
) -> Result<Tensor> {
    r38_conv2d(x, weight, bias, spec, true, None, None)
}

/// The im2col + GEMM path alone, unconditionally.
pub fn gemm_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    spec: &ConvSpec,
) -> Result<Tensor> {
    r38_conv2d(x, weight, bias, spec, false, None, None)
}

fn r38_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    spec: &ConvSpec,
    allow_winograd: bool,
    kept: Option<&KeptKernels>,
    shortcut: Option<&Tensor>,
) -> Result<Tensor> {
    let geometry = geometry_of(x, weight, spec)?;
    if !geometry.valid() {
        let y = exact_conv2d(x, weight, bias, spec)?;
        return match shortcut {
            Some(s) => s + y,
            None => Ok(y),
        };
    }
    FastConv::new(geometry, weight, bias, allow_winograd, kept)?.apply(x, weight, shortcut)
}

/// `conv(ReLU(BN(x)))` (no bias), plus `shortcut` if given, in inference: the pre-activation,
/// folded into `pre`, is applied to each row of `x` as Winograd's input transform copies it,
/// so the pre-activated map is never written (nor read back). `None` where that does not
/// apply (another engine than [`Engine::Fast`], a tensor autograd tracks, a convolution off
/// Winograd): the caller then pre-activates and convolves as usual, for the same bits. With
/// `kept`, the Winograd kernels are those of [`conv2d_kept`].
pub fn conv2d_after(
    x: &Tensor,
    pre: pre_activation::ScaleShift,
    weight: &Tensor,
    spec: &ConvSpec,
    shortcut: Option<&Tensor>,
    kept: Option<&KeptKernels>,
) -> Result<Option<Tensor>> {
    if engine() != Engine::Fast
        || spec.bias
        || !fast_applies(x, weight, None)
        || shortcut.is_some_and(|s| !fast_applies(s, weight, None))
    {
        return Ok(None);
    }
    let geometry = geometry_of(x, weight, spec)?;
    let winograd = geometry.valid()
        && match kept {
            Some(_) => winograd::applies_kept(&geometry),
            None => winograd::applies(&geometry),
        };
    if !winograd || pre.channels() != geometry.in_channels {
        return Ok(None);
    }
    let mut conv = FastConv::new(geometry, weight, None, true, kept)?;
    conv.pre = Some(pre);
    conv.apply(x, weight, shortcut).map(Some)
}

struct FastConv {
    geometry: Geometry,
    bias: Option<Vec<f32>>,
    winograd: bool,
    /// Winograd kernels made beforehand (inference only: no backward).
    kept: Option<Arc<winograd::Transformed>>,
    /// The pre-activation Winograd's input transform applies (inference only).
    pre: Option<pre_activation::ScaleShift>,
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("engine::conv2d: {what} must be f32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("engine::conv2d: {what} must be contiguous"),
    }
}

impl FastConv {
    /// The fast convolution of `weight` for `geometry`: Winograd where `allow_winograd` and
    /// it applies (with `kept`'s kernels where they apply), else im2col.
    fn new(
        geometry: Geometry,
        weight: &Tensor,
        bias: Option<&Tensor>,
        allow_winograd: bool,
        kept: Option<&KeptKernels>,
    ) -> Result<Self> {
        let kept = match kept {
            Some(k) if allow_winograd && winograd::applies_kept(&geometry) => {
                Some(k.get(weight, &geometry, winograd::block_kept(&geometry))?)
            }
            _ => None,
        };
        let bias = match bias {
            Some(b) => Some(b.flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        let winograd = kept.is_some() || (allow_winograd && winograd::applies(&geometry));
        Ok(FastConv {
            geometry,
            bias,
            winograd,
            kept,
            pre: None,
        })
    }

    /// The convolution of `x`, plus `shortcut` if given (of the output's shape), without
    /// autograd.
    fn apply(self, x: &Tensor, weight: &Tensor, shortcut: Option<&Tensor>) -> Result<Tensor> {
        let g = &self.geometry;
        let dims = [g.batch, g.out_channels, g.out_height(), g.out_width()];
        if let Some(s) = shortcut.filter(|s| s.dims() != dims) {
            candle_core::bail!(
                "engine: shortcut {:?} is not of the output's shape {dims:?}",
                s.dims()
            );
        }
        let (x, weight) = (x.contiguous()?, weight.contiguous()?);
        match shortcut {
            Some(s) => x.apply_op3_no_bwd(&weight, &s.contiguous()?, &PlusShortcut(self)),
            None => x.apply_op2_no_bwd(&weight, &self),
        }
    }

    /// `conv(x, w) (+ bias) (+ residual)` in a fresh (unzeroed) buffer.
    fn output(&self, x: &[f32], w: &[f32], residual: Option<&[f32]>) -> (CpuStorage, Shape) {
        let g = &self.geometry;
        let shape = Shape::from((g.batch, g.out_channels, g.out_height(), g.out_width()));
        let bias = self.bias.as_deref();
        let write = |y: &mut [MaybeUninit<f32>]| {
            let out = Output { y, residual };
            let input = winograd::Input {
                x,
                pre: self.pre.as_ref(),
            };
            if let Some(u) = &self.kept {
                winograd::conv2d_transformed_into(g, u, input, bias, out);
            } else if self.winograd {
                winograd::conv2d_into(g, input, w, bias, out);
            } else {
                assert!(self.pre.is_none(), "only Winograd pre-activates its input");
                kernel::im2col_gemm_into(g, x, w, bias, out);
            }
        };
        // SAFETY: each of the three paths writes every element of its output.
        let y = unsafe { output::written_by(shape.elem_count(), write) };
        (CpuStorage::F32(y), shape)
    }
}

/// A [`FastConv`] whose output is `shortcut + conv(x, w)` (see [`conv2d_plus`]).
struct PlusShortcut(FastConv);

impl CustomOp3 for PlusShortcut {
    fn name(&self) -> &'static str {
        "r38-conv2d-plus"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "input")?;
        let w = contiguous_f32(s2, l2, "weight")?;
        let shortcut = contiguous_f32(s3, l3, "shortcut")?;
        Ok(self.0.output(x, w, Some(shortcut)))
    }
}

impl CustomOp2 for FastConv {
    fn name(&self) -> &'static str {
        "r38-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "input")?;
        let w = contiguous_f32(s2, l2, "weight")?;
        Ok(self.output(x, w, None))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let g = self.geometry;
        // Where the input gradient is itself a convolution Winograd handles, it goes there.
        let winograd_input = backward::input_gradient_as_convolution(&g)
            .filter(|t| self.winograd && winograd::applies(t));
        let dx = weight.apply_op2_no_bwd(&dy, &Gradient::Input(g, winograd_input))?;
        let dw = x.apply_op2_no_bwd(&dy, &Gradient::Kernel(g, self.winograd))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// The two gradients of [`FastConv`], as candle operations on (weight, dY) and (x, dY): the
/// input gradient through Winograd where it is a convolution `t` Winograd computes
/// ([`backward::input_gradient_as_convolution`]), the kernel gradient where the forward pass
/// went there and it fits.
enum Gradient {
    Input(Geometry, Option<Geometry>),
    Kernel(Geometry, bool),
}

impl CustomOp2 for Gradient {
    fn name(&self) -> &'static str {
        match self {
            Gradient::Input(..) => "r38-conv2d-input-gradient",
            Gradient::Kernel(..) => "r38-conv2d-kernel-gradient",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dy = contiguous_f32(s2, l2, "output gradient")?;
        match self {
            Gradient::Input(g, winograd) => {
                let w = contiguous_f32(s1, l1, "weight")?;
                let shape = Shape::from((g.batch, g.in_channels, g.height, g.width));
                let mut dx = vec![0f32; shape.elem_count()];
                match winograd {
                    Some(t) => winograd::input_gradient(t, dy, w, &mut dx),
                    None => backward::input_gradient(g, w, dy, &mut dx),
                }
                Ok((CpuStorage::F32(dx), shape))
            }
            Gradient::Kernel(g, winograd) => {
                let x = contiguous_f32(s1, l1, "input")?;
                let shape = Shape::from((g.out_channels, g.in_channels, g.kernel, g.kernel));
                let mut dw = vec![0f32; shape.elem_count()];
                match winograd::kernel_gradient_block(g).filter(|_| *winograd) {
                    Some(m) => winograd::kernel_gradient(g, m, x, dy, &mut dw),
                    None => backward::kernel_gradient(g, x, dy, &mut dw),
                }
                Ok((CpuStorage::F32(dw), shape))
            }
        }
    }
}

#[cfg(test)]
mod tests;
