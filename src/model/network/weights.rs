//! Tensors from `model.safetensors`, or from shards listed in `model.safetensors.index.json`.
//!
//! Every file's header and data length are checked when the model opens, so a truncated or
//! corrupt file is reported by name before any tensor is read; a missing tensor or one of the
//! wrong shape is reported with the file and the tensor name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::model::error::ModelError;

struct Entry {
    file: usize,
    shape: Vec<usize>,
}

pub struct Weights {
    files: Vec<PathBuf>,
    entries: HashMap<String, Entry>,
    data: MmapedSafetensors,
    dtype: DType,
    device: Device,
}

impl Weights {
    /// Opens the weights of the model folder `dir`.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Weights, ModelError> {
        let files = weight_files(dir)?;
        let mut entries = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(|e| ModelError::Io { file: path.clone(), source: e })?;
            // SAFETY: the map is read-only and dropped before this function returns; a file
            // changed underneath would at worst produce garbage values, not memory unsafety in
            // safe code reading bytes.
            let mmap = unsafe { memmap2::MmapOptions::new().map(&file) }
                .map_err(|e| ModelError::Io { file: path.clone(), source: e })?;
            let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| ModelError::Weights {
                file: path.clone(),
                message: format!("is not a valid safetensors file ({e}); it may be truncated: download it again"),
            })?;
            for (name, view) in st.tensors() {
                entries.insert(name, Entry { file: i, shape: view.shape().to_vec() });
            }
        }
        // SAFETY: as above; candle keeps its own read-only maps of the same files.
        let data = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| ModelError::Weights { file: files[0].clone(), message: e.to_string() })?;
        Ok(Weights { files, entries, data, dtype, device: device.clone() })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Tensor `name`, checked to have `shape` (`why` says where the expected shape comes from),
    /// converted to the model's dtype and device.
    pub fn get(&self, name: &str, shape: &[usize], why: &str) -> Result<Tensor, ModelError> {
        let Some(entry) = self.entries.get(name) else {
            let files: Vec<String> = self.files.iter().map(|f| file_name(f)).collect();
            return Err(ModelError::MissingTensor { files: files.join(", "), tensor: name.to_string() });
        };
        if entry.shape != shape {
            return Err(ModelError::Shape {
                file: self.files[entry.file].clone(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                found: entry.shape.clone(),
                why: why.to_string(),
            });
        }
        let tensor = self.data.load(name, &self.device).map_err(|e| ModelError::Weights {
            file: self.files[entry.file].clone(),
            message: format!("cannot read tensor {name}: {e}"),
        })?;
        Ok(tensor.to_dtype(self.dtype)?)
    }
}

pub fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

/// The safetensors files of a model folder: the shards named by the index, else
/// model.safetensors.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::Io { file: index.clone(), source: e })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Json { file: index.clone(), source: e })?;
        let Some(map) = value.get("weight_map").and_then(|m| m.as_object()) else {
            return Err(ModelError::Config {
                file: index,
                key: "weight_map".into(),
                message: "is missing or not an object of tensor name → shard file".into(),
            });
        };
        let mut files: Vec<PathBuf> = Vec::new();
        for (tensor, shard) in map {
            let Some(shard) = shard.as_str() else {
                return Err(ModelError::Config {
                    file: index,
                    key: format!("weight_map.{tensor}"),
                    message: "must name a shard file".into(),
                });
            };
            let path = dir.join(shard);
            if !files.contains(&path) {
                if !path.exists() {
                    return Err(ModelError::MissingFile {
                        path,
                        hint: format!("{} lists it for {tensor}; download the missing shard", file_name(&index)),
                    });
                }
                files.push(path);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(ModelError::Config {
                file: index,
                key: "weight_map".into(),
                message: "lists no tensors".into(),
            });
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let hint = if dir.join("pytorch_model.bin").exists() {
        "the folder has pytorch_model.bin only; selfspec reads safetensors (save the model with \
         `model.save_pretrained(dir, safe_serialization=True)`)"
            .to_string()
    } else {
        "a Hugging Face model folder holds model.safetensors or model.safetensors.index.json with its shards"
            .to_string()
    };
    Err(ModelError::MissingFile { path: single, hint })
}
