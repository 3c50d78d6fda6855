//! The one GPU context of a provider: adapter, device, queue, and a cache of compute pipelines keyed by
//! kernel and its parameters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What went wrong on the GPU, in a form the provider can report to the server.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU adapter is available: {0}")]
    NoAdapter(String),
    #[error("the GPU device could not be created: {0}")]
    RequestDevice(String),
    #[error("the GPU ran out of memory: {0}")]
    OutOfMemory(String),
    #[error("the GPU rejected a command: {0}")]
    Validation(String),
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    #[error("reading a result back from the GPU failed: {0}")]
    Readback(String),
    #[error("the GPU failed its start-up self-check: {0}")]
    SelfCheck(String),
    #[error("{0} needs {1} bytes in one buffer, more than this GPU allows ({2})")]
    TooLarge(&'static str, u64, u64),
}

impl From<wgpu::Error> for GpuError {
    fn from(e: wgpu::Error) -> GpuError {
        match e {
            wgpu::Error::OutOfMemory { .. } => GpuError::OutOfMemory(e.to_string()),
            _ => GpuError::Validation(e.to_string()),
        }
    }
}

/// A description of the adapter, for the provider's Hello and for choosing kernel shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub driver: String,
    /// A software rasteriser (lavapipe, SwiftShader, WARP): correct but slow; kernels pick small tiles.
    pub software: bool,
}

impl AdapterSummary {
    /// A name for people: the adapter's own, else its driver's, else what it is ("an unnamed WebGPU adapter":
    /// browsers may report an empty description, SwiftShader among them).
    pub fn label(&self) -> String {
        let backend = match self.backend.as_str() {
            "BrowserWebGpu" => "WebGPU",
            other => other,
        };
        match (self.name.trim(), self.driver.trim()) {
            ("", "") => format!("an unnamed {backend} adapter"),
            ("", driver) => driver.to_owned(),
            (name, _) => name.to_owned(),
        }
    }

    /// Why the engine trains on the CPU rather than on this (software) adapter.
    pub fn slower_than_the_cpu(&self) -> String {
        format!("{} is a software adapter, slower than training on the CPU", self.label())
    }
}

/// How a kernel uses one of its bindings (all in group 0, numbered in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Uniform,
    Read,
    ReadWrite,
}

/// A WGSL kernel: its source (files from `shaders/`, concatenated) and the bindings its entry point
/// `main` declares.
#[derive(Debug)]
pub struct Kernel {
    pub name: &'static str,
    pub source: &'static [&'static str],
    pub bindings: &'static [Access],
}

/// The key of a cached pipeline: the kernel, its source placeholders and its override constants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KernelKey {
    pub name: &'static str,
    pub placeholders: Vec<(&'static str, u32)>,
    pub overrides: Vec<(&'static str, u32)>,
}

/// A compiled kernel with its bind-group layout.
struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// One kernel launch with its buffers bound: made once, encoded as often as needed.
pub struct Dispatch {
    pipeline: Arc<Pipeline>,
    bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
}

impl Dispatch {
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }
}

/// Threads per workgroup of the element-wise kernels (the WebGPU default limit is 256).
pub const LINEAR_WORKGROUP: u32 = 256;

/// Workgroups for `n` threads in groups of [`LINEAR_WORKGROUP`], split over x and y so that neither exceeds
/// the 65535 limit. Kernels compute their index as `(wg.y * num_workgroups.x + wg.x) * 256 + local.x`.
pub fn linear_workgroups(n: usize) -> [u32; 3] {
    let groups = n.div_ceil(LINEAR_WORKGROUP as usize).max(1);
    let x = groups.min(65_535);
    [x as u32, groups.div_ceil(x) as u32, 1]
}

/// The GPU context: made once, reused for every step.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: AdapterSummary,
    pub limits: wgpu::Limits,
    // A std Mutex: nothing awaits while holding it.
    pipelines: Mutex<HashMap<KernelKey, Arc<Pipeline>>>,
    lost: Arc<Mutex<Option<String>>>,
    /// The first error raised outside an error scope since it was last reported. wgpu's default
    /// handler panics; a provider must report instead.
    uncaptured: Arc<Mutex<Option<(bool, String)>>>,
    /// Bytes of storage and read-back buffers created so far, and the largest one: what the tests hold
    /// against [`Model::device_need`](daig_shared::model::Model::device_need).
    allocated: AtomicU64,
    largest: AtomicU64,
}

impl Gpu {
    /// Opens the best adapter (high performance) with the limits it offers.
    ///
    /// # Errors
    /// When there is no adapter or the device cannot be created.
    pub async fn new() -> Result<Gpu, GpuError> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::PRIMARY,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::NoAdapter(e.to_string()))?;
        Gpu::from_adapter(adapter).await
    }

    /// Opens a device on `adapter`.
    ///
    /// # Errors
    /// When the device cannot be created.
    pub async fn from_adapter(adapter: wgpu::Adapter) -> Result<Gpu, GpuError> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("daig"),
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::RequestDevice(e.to_string()))?;
        let lost = Arc::new(Mutex::new(None));
        let lost_in_callback = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            *lost_in_callback.lock().expect("not poisoned") = Some(format!("{reason:?}: {message}"));
        });
        let uncaptured = Arc::new(Mutex::new(None));
        let uncaptured_in_handler = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let oom = matches!(e, wgpu::Error::OutOfMemory { .. });
            uncaptured_in_handler.lock().expect("not poisoned").get_or_insert((oom, e.to_string()));
        }));
        let software = info.device_type == wgpu::DeviceType::Cpu
            || ["llvmpipe", "lavapipe", "SwiftShader", "WARP"].iter().any(|s| info.name.contains(s));
        Ok(Gpu {
            device,
            queue,
            adapter: AdapterSummary {
                name: info.name,
                backend: format!("{:?}", info.backend),
                driver: info.driver_info,
                software,
            },
            limits,
            pipelines: Mutex::new(HashMap::new()),
            lost,
            uncaptured,
            allocated: AtomicU64::new(0),
            largest: AtomicU64::new(0),
        })
    }

    fn pipeline(&self, kernel: &Kernel, key: KernelKey) -> Arc<Pipeline> {
        let mut cache = self.pipelines.lock().expect("not poisoned");
        if let Some(p) = cache.get(&key) {
            return p.clone();
        }
        let mut code = kernel.source.concat();
        for (name, value) in &key.placeholders {
            code = code.replace(&format!("{{{{{name}}}}}"), &value.to_string());
        }
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(kernel.name),
            source: wgpu::ShaderSource::Wgsl(code.into()),
        });
        let entries: Vec<_> = kernel
            .bindings
            .iter()
            .enumerate()
            .map(|(i, access)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match access {
                        Access::Uniform => wgpu::BufferBindingType::Uniform,
                        Access::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Access::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(kernel.name), entries: &entries });
        let pipeline_layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(kernel.name),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let constants: Vec<(&str, f64)> = key.overrides.iter().map(|(n, v)| (*n, f64::from(*v))).collect();
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.name),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions { constants: &constants, ..Default::default() },
            cache: None,
        });
        let pipeline = Arc::new(Pipeline { pipeline, layout });
        cache.insert(key, pipeline.clone());
        pipeline
    }

    /// Prepares one launch of `kernel` (compiled with the given placeholders and overrides, cached) over
    /// `buffers`, bound in order.
    pub fn dispatch(
        &self,
        kernel: &Kernel,
        placeholders: &[(&'static str, u32)],
        overrides: &[(&'static str, u32)],
        buffers: &[&wgpu::Buffer],
        workgroups: [u32; 3],
    ) -> Dispatch {
        assert_eq!(
            buffers.len(),
            kernel.bindings.len(),
            "kernel {} binds {} buffers",
            kernel.name,
            kernel.bindings.len()
        );
        let key = KernelKey { name: kernel.name, placeholders: placeholders.to_vec(), overrides: overrides.to_vec() };
        let pipeline = self.pipeline(kernel, key);
        let entries: Vec<_> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect();
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.name),
            layout: &pipeline.layout,
            entries: &entries,
        });
        Dispatch { pipeline, bind_group, workgroups }
    }

    /// Encodes `dispatches` in order into one compute pass and submits it.
    pub fn run(&self, dispatches: &[&Dispatch]) {
        let mut encoder = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            for d in dispatches {
                d.encode(&mut pass);
            }
        }
        self.queue.submit([encoder.finish()]);
    }

    fn count(&self, size: u64) {
        self.allocated.fetch_add(size, Ordering::Relaxed);
        self.largest.fetch_max(size, Ordering::Relaxed);
    }

    /// Starts [`Gpu::allocated_bytes`] and [`Gpu::largest_allocation`] from zero.
    pub fn reset_allocation_counts(&self) {
        self.allocated.store(0, Ordering::Relaxed);
        self.largest.store(0, Ordering::Relaxed);
    }

    /// Bytes of storage and read-back buffers created since the device was opened or the counts were reset
    /// (freed ones included).
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    /// The largest storage or read-back buffer created since the device was opened or the counts were reset.
    pub fn largest_allocation(&self) -> u64 {
        self.largest.load(Ordering::Relaxed)
    }

    /// The largest storage buffer the device allocates and binds.
    pub fn max_buffer_bytes(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size)
    }

    /// A storage buffer of `len` f32 values, zeroed.
    ///
    /// # Errors
    /// When the buffer is larger than the device allows.
    pub fn buffer(&self, label: &'static str, len: usize) -> Result<wgpu::Buffer, GpuError> {
        let size = len.max(1).checked_mul(4).map_or(u64::MAX, |b| b as u64);
        let max = self.max_buffer_bytes();
        if size > max {
            return Err(GpuError::TooLarge(label, size, max));
        }
        self.count(size);
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        }))
    }

    /// A storage buffer holding `data`.
    ///
    /// # Errors
    /// When the buffer is larger than the device allows.
    pub fn buffer_from(&self, label: &'static str, data: &[f32]) -> Result<wgpu::Buffer, GpuError> {
        let buf = self.buffer(label, data.len())?;
        self.write(&buf, data);
        Ok(buf)
    }

    /// Writes `data` at the start of `buffer`.
    pub fn write(&self, buffer: &wgpu::Buffer, data: &[f32]) {
        if !data.is_empty() {
            self.queue.write_buffer(buffer, 0, &daig_shared::wire::f32s_to_le_bytes(data));
        }
    }

    /// A small uniform buffer of u32 words (f32 values go in as their bits), rewritable with
    /// [`Gpu::write_words`].
    pub fn uniform(&self, words: &[u32]) -> wgpu::Buffer {
        let mut padded = words.to_vec();
        padded.resize(words.len().next_multiple_of(4).max(4), 0);
        // Written through the queue rather than mapped at creation: mapping panics on a lost device,
        // where a write is only an error that the next check reports.
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("uniform"),
            size: (padded.len() * 4) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.write_words(&buffer, &padded);
        buffer
    }

    /// A storage buffer of u32 values (sample indices, labels, argmax positions).
    ///
    /// # Errors
    /// When the buffer is larger than the device allows.
    pub fn u32_buffer(&self, label: &'static str, len: usize) -> Result<wgpu::Buffer, GpuError> {
        self.buffer(label, len)
    }

    /// Writes u32 words at the start of `buffer`.
    pub fn write_words(&self, buffer: &wgpu::Buffer, words: &[u32]) {
        if !words.is_empty() {
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            self.queue.write_buffer(buffer, 0, &bytes);
        }
    }

    /// Reads the first `len` f32 values of `buffer` back to the CPU.
    ///
    /// # Errors
    /// When mapping fails or the device was lost.
    pub async fn read(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>, GpuError> {
        let size = (len * 4) as u64;
        if size == 0 {
            return Ok(Vec::new());
        }
        self.count(size);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
        self.queue.submit([encoder.finish()]);
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.await
            .map_err(|_| GpuError::Readback("the map callback was dropped".into()))?
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let data: Vec<f32> = {
            let view = staging.slice(..).get_mapped_range().map_err(|e| GpuError::Readback(e.to_string()))?;
            view.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        };
        staging.unmap();
        self.check_lost()?;
        Ok(data)
    }

    /// Waits for submitted work on native; a no-op in the browser, where the callbacks arrive on their own.
    ///
    /// # Errors
    /// When the device was lost.
    pub fn wait(&self) -> Result<(), GpuError> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| GpuError::DeviceLost(e.to_string()))?;
        self.check_lost()
    }

    /// Reports a lost device, or the first error raised outside an error scope since the last report.
    ///
    /// # Errors
    /// [`GpuError::DeviceLost`], [`GpuError::OutOfMemory`] or [`GpuError::Validation`].
    pub fn check_lost(&self) -> Result<(), GpuError> {
        if let Some(reason) = self.lost.lock().expect("not poisoned").clone() {
            return Err(GpuError::DeviceLost(reason));
        }
        match self.uncaptured.lock().expect("not poisoned").take() {
            Some((true, message)) => Err(GpuError::OutOfMemory(message)),
            Some((false, message)) => Err(GpuError::Validation(message)),
            None => Ok(()),
        }
    }

    /// Runs `f` inside validation and out-of-memory error scopes, turning what they catch into a
    /// [`GpuError`].
    ///
    /// # Errors
    /// The first validation or out-of-memory error raised by the commands `f` issued.
    pub async fn checked<T>(&self, f: impl FnOnce() -> Result<T, GpuError>) -> Result<T, GpuError> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = f();
        let v = validation.pop().await;
        let o = oom.pop().await;
        if let Some(e) = o.or(v) {
            return Err(e.into());
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::AdapterSummary;

    #[test]
    fn an_adapter_always_has_a_name_for_people() {
        let adapter = |name: &str, driver: &str, backend: &str| AdapterSummary {
            name: name.into(),
            backend: backend.into(),
            driver: driver.into(),
            software: true,
        };
        assert_eq!(adapter("llvmpipe (LLVM 19)", "Mesa", "Vulkan").label(), "llvmpipe (LLVM 19)");
        assert_eq!(adapter(" ", "SwiftShader driver", "BrowserWebGpu").label(), "SwiftShader driver");
        // What Chromium's SwiftShader may report: nothing at all.
        let unnamed = adapter("", "", "BrowserWebGpu");
        assert_eq!(unnamed.label(), "an unnamed WebGPU adapter");
        assert_eq!(
            unnamed.slower_than_the_cpu(),
            "an unnamed WebGPU adapter is a software adapter, slower than training on the CPU"
        );
    }
}
