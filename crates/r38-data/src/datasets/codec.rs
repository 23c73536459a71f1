//! Mapping between the values stored in a dataset's label files, the train ids a network
//! predicts, and the ids a dataset's evaluation server or scripts expect.

use std::fmt;
use std::path::Path;

use super::error::{DatasetError, Result};
use super::label_png::LabelMap;
use super::IGNORE_LABEL;

/// A dataset's label conventions as three 256-entry tables:
///
/// * **decode**: raw file value → train id (`0..C`) or the ignore label 255; raw values that
///   are neither a class nor ignore are *invalid* and make [`LabelCodec::decode_map`] fail;
/// * **encode**: train id → the dataset's submission id space (e.g. Cityscapes label ids).
///   Values that are not train ids (255 and anything `>= C`) encode to the dataset's *void*
///   id, so that the output is always a valid label file.
#[derive(Clone, PartialEq, Eq)]
pub struct LabelCodec {
    num_classes: usize,
    decode: [u8; 256],
    valid: [bool; 256],
    encode: [u8; 256],
}

impl fmt::Debug for LabelCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LabelCodec")
            .field("num_classes", &self.num_classes)
            .field("valid", &self.valid_values())
            .finish()
    }
}

impl LabelCodec {
    /// A codec from two functions: `decode(raw)` gives the train id (`< num_classes`), the
    /// ignore label 255, or `None` for an invalid raw value; `encode(train_id)` gives the
    /// submission id of each train id `0..num_classes`, and `void` is written for every other
    /// value. Panics if `num_classes` is not in `1..=255` or `decode` returns something else.
    pub fn new(
        num_classes: usize,
        decode: impl Fn(u8) -> Option<u8>,
        encode: impl Fn(u8) -> u8,
        void: u8,
    ) -> Self {
        assert!(
            (1..=255).contains(&num_classes),
            "num_classes must be in 1..=255, got {num_classes}"
        );
        let mut codec = LabelCodec {
            num_classes,
            decode: [IGNORE_LABEL; 256],
            valid: [false; 256],
            encode: [void; 256],
        };
        for raw in 0..=255u8 {
            if let Some(t) = decode(raw) {
                assert!(
                    usize::from(t) < num_classes || t == IGNORE_LABEL,
                    "decode({raw}) = {t} is neither a train id below {num_classes} nor 255"
                );
                codec.decode[usize::from(raw)] = t;
                codec.valid[usize::from(raw)] = true;
            }
        }
        for t in 0..num_classes {
            codec.encode[t] = encode(t as u8);
        }
        codec
    }

    /// Raw values `0..num_classes` are the train ids, 255 is ignore, everything else invalid;
    /// encoding is the identity (other values encode to 255).
    pub fn identity(num_classes: usize) -> Self {
        LabelCodec::new(
            num_classes,
            |raw| (usize::from(raw) < num_classes || raw == IGNORE_LABEL).then_some(raw),
            |t| t,
            IGNORE_LABEL,
        )
    }

    /// The number of classes `C`.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The train id of a raw value (`None` if the value is invalid).
    pub fn decode(&self, raw: u8) -> Option<u8> {
        self.valid[usize::from(raw)].then_some(self.decode[usize::from(raw)])
    }

    /// The submission id of a train id (the void id for 255 and values `>= C`).
    pub fn encode(&self, train_id: u8) -> u8 {
        self.encode[usize::from(train_id)]
    }

    /// Encodes a slice of train ids (see [`LabelCodec::encode`]).
    pub fn encode_slice(&self, train_ids: &[u8]) -> Vec<u8> {
        train_ids.iter().map(|&t| self.encode(t)).collect()
    }

    /// The valid raw values in words, e.g. `0..=20, 255`.
    pub fn valid_values(&self) -> String {
        let mut parts = Vec::new();
        let mut v = 0usize;
        while v < 256 {
            if !self.valid[v] {
                v += 1;
                continue;
            }
            let start = v;
            while v + 1 < 256 && self.valid[v + 1] {
                v += 1;
            }
            parts.push(match v - start {
                0 => format!("{start}"),
                1 => format!("{start}, {v}"),
                _ => format!("{start}..={v}"),
            });
            v += 1;
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }

    /// Decodes a map of raw values into train ids in place. An invalid value fails with
    /// [`DatasetError::LabelValue`], naming `path`, the value, its first position and its
    /// pixel count.
    pub fn decode_map(&self, mut map: LabelMap, path: &Path) -> Result<LabelMap> {
        if let Some(i) = map.data.iter().position(|&v| !self.valid[usize::from(v)]) {
            let value = map.data[i];
            let width = map.width.max(1) as usize;
            return Err(DatasetError::LabelValue {
                path: path.into(),
                value,
                x: (i % width) as u32,
                y: (i / width) as u32,
                count: map.data.iter().filter(|&&v| v == value).count(),
                valid: self.valid_values(),
            });
        }
        for v in &mut map.data {
            *v = self.decode[usize::from(*v)];
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_codec() {
        let c = LabelCodec::identity(21);
        assert_eq!(c.valid_values(), "0..=20, 255");
        assert_eq!(c.decode(20), Some(20));
        assert_eq!(c.decode(21), None);
        assert_eq!(c.decode(255), Some(255));
        assert_eq!(c.encode(3), 3);
        assert_eq!(c.encode(255), 255);
        assert_eq!(c.encode(30), 255);
    }

    #[test]
    fn decode_map_reports_first_bad_value() {
        let c = LabelCodec::identity(2);
        let m = LabelMap::new(3, 2, vec![0, 1, 255, 1, 7, 7]).unwrap();
        let err = c.decode_map(m, Path::new("a.png")).unwrap_err();
        match err {
            DatasetError::LabelValue {
                value, x, y, count, ..
            } => assert_eq!((value, x, y, count), (7, 1, 1, 2)),
            other => panic!("{other}"),
        }
    }
}
