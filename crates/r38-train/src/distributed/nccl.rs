//! [`Collective`] over NCCL: one process per GPU, as torchrun, a Slurm array or a Kubernetes
//! indexed job starts them.
//!
//! Rendezvous: rank 0 makes the NCCL id and hands it over TCP to every other rank, on
//! `MASTER_ADDR` (default `127.0.0.1`) and port `R38_NCCL_PORT` (default `MASTER_PORT + 1`,
//! as torchrun's own store already listens on `MASTER_PORT`; `MASTER_PORT` defaults to 29500).
//! Waiting for the other ranks ends after `R38_RENDEZVOUS_TIMEOUT` seconds (default 600), with
//! an error rather than a hang.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::backend::BackendStorage;
use candle_core::{CudaDevice, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use cudarc::nccl::{Comm, Id, ReduceOp};

use super::{Collective, Ranks};
use crate::error::{bail, train_error, Context, Result};

const ID_BYTES: usize = 128;

/// A communicator used by one thread at a time: NCCL allows any thread to issue a call, not two
/// at once, which the mutex around it ensures.
struct CommCell(Comm);

// SAFETY: the raw communicator handle is only touched through `&Mutex<CommCell>`.
unsafe impl Send for CommCell {}

/// The NCCL all-reduce: one process, one GPU, one rank.
pub struct NcclCollective {
    comm: Mutex<CommCell>,
    device: Device,
    ranks: Ranks,
}

impl NcclCollective {
    /// Joins the run described by `ranks` on `device` (a CUDA device, normally `cuda:LOCAL_RANK`).
    pub fn join(ranks: Ranks, device: &Device) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            bail!("NCCL data-parallel training needs a CUDA device, not {device:?}");
        };
        let id = rendezvous(ranks)?;
        let comm = Comm::from_rank(cuda.cuda_stream(), ranks.rank, ranks.world_size, id)
            .map_err(|e| train_error!("NCCL init of rank {} failed: {e:?}", ranks.rank))?;
        Ok(Self {
            comm: Mutex::new(CommCell(comm)),
            device: device.clone(),
            ranks,
        })
    }
}

impl Collective for NcclCollective {
    fn ranks(&self) -> Ranks {
        self.ranks
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let comm = self
            .comm
            .lock()
            .map_err(|_| train_error!("the NCCL communicator's lock was poisoned"))?;
        // Scalars from the host (losses, steps) travel through the GPU too.
        let dtype = if t.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let on_gpu = t.to_device(&self.device)?.to_dtype(dtype)?.contiguous()?;
        let sum = on_gpu.apply_op1_no_bwd(&AllReduceSum(&comm.0))?;
        Ok(sum.to_dtype(t.dtype())?.to_device(t.device())?)
    }
}

struct AllReduceSum<'a>(&'a Comm);

// SAFETY: the op lives only while the communicator's lock is held (see `all_reduce_sum`).
unsafe impl Send for AllReduceSum<'_> {}
unsafe impl Sync for AllReduceSum<'_> {}

impl AllReduceSum<'_> {
    fn reduce<T>(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<CudaStorage>
    where
        T: candle_core::cuda::CudaDType
            + cudarc::nccl::NcclType
            + cudarc::driver::DeviceRepr
            + cudarc::driver::ValidAsZeroBits,
    {
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("all-reduce of a strided tensor".into()))?;
        let device: CudaDevice = s.device().clone();
        let src = s.as_cuda_slice::<T>()?.slice(start..end);
        let mut dst = device.alloc_zeros::<T>(end - start)?;
        self.0
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
        Ok(CudaStorage::wrap_cuda_slice(dst, device))
    }
}

impl CustomOp1 for AllReduceSum<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        Err(candle_core::Error::Msg(
            "the NCCL all-reduce runs on CUDA tensors only".into(),
        ))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let out = match s.dtype() {
            DType::F32 => self.reduce::<f32>(s, l)?,
            DType::F64 => self.reduce::<f64>(s, l)?,
            d => candle_core::bail!("NCCL all-reduce of {d:?}"),
        };
        Ok((out, l.shape().clone()))
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Rank 0's NCCL id, on every rank.
fn rendezvous(ranks: Ranks) -> Result<Id> {
    let addr = env_or("MASTER_ADDR", "127.0.0.1");
    let port: u16 = match std::env::var("R38_NCCL_PORT") {
        Ok(p) => p
            .parse()
            .map_err(|_| train_error!("R38_NCCL_PORT={p:?} is not a port"))?,
        Err(_) => {
            let p = env_or("MASTER_PORT", "29500");
            let p: u16 = p
                .parse()
                .map_err(|_| train_error!("MASTER_PORT={p:?} is not a port"))?;
            p.checked_add(1)
                .ok_or_else(|| train_error!("MASTER_PORT {p} leaves no port for NCCL"))?
        }
    };
    let timeout = env_or("R38_RENDEZVOUS_TIMEOUT", "600");
    let timeout = Duration::from_secs(
        timeout
            .parse()
            .map_err(|_| train_error!("R38_RENDEZVOUS_TIMEOUT={timeout:?} is not seconds"))?,
    );
    let deadline = Instant::now() + timeout;
    let endpoint = format!("{addr}:{port}");
    if ranks.is_leader() {
        let id = Id::new().map_err(|e| train_error!("NCCL id: {e:?}"))?;
        let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
        let listener =
            TcpListener::bind(&endpoint).with_context(|| format!("rendezvous on {endpoint}"))?;
        listener.set_nonblocking(true)?;
        let mut served = 1;
        while served < ranks.world_size {
            match listener.accept() {
                Ok((mut peer, _)) => {
                    peer.set_nonblocking(false)?;
                    peer.write_all(&bytes)
                        .context("sending the NCCL id to a rank")?;
                    served += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        bail!(
                            "rendezvous on {endpoint}: {} of {} ranks joined within {timeout:?}",
                            served,
                            ranks.world_size
                        );
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e).context(format!("rendezvous on {endpoint}")),
            }
        }
        Ok(id)
    } else {
        let target = endpoint
            .to_socket_addrs()
            .with_context(|| format!("MASTER_ADDR {endpoint}"))?
            .next()
            .ok_or_else(|| train_error!("MASTER_ADDR {endpoint} resolves to nothing"))?;
        loop {
            match TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
                Ok(mut stream) => {
                    stream.set_read_timeout(Some(timeout))?;
                    let mut bytes = [0u8; ID_BYTES];
                    stream
                        .read_exact(&mut bytes)
                        .with_context(|| format!("reading the NCCL id from {endpoint}"))?;
                    return Ok(Id::uninit(bytes.map(|b| b as std::ffi::c_char)));
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => {
                    return Err(e).context(format!(
                        "rank {} could not reach rank 0 at {endpoint} within {timeout:?}",
                        ranks.rank
                    ))
                }
            }
        }
    }
}
