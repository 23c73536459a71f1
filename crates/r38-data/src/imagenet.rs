//! The 1000 ImageNet-1k (ILSVRC-2012) classes in class-index order.
//!
//! The order is the sorted order of the WordNet synset identifiers (`n01440764` first), the
//! order of the ILSVRC-2012 training folders, used by MXNet, Torch and timm ImageNet models
//! and by the authors' `iclass/data/ilsvrc-cls` lists. The table is `assets/imagenet_classes.tsv`,
//! derived from the Python package timm (Apache-2.0); see `assets/NOTICE`.

use std::sync::OnceLock;

/// Number of ImageNet-1k classes.
pub const IMAGENET_NUM_CLASSES: usize = 1000;

const TABLE: &str = include_str!("../assets/imagenet_classes.tsv");

/// One ImageNet-1k class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageNetClass {
    /// Class index, `0..1000`.
    pub index: usize,
    /// WordNet synset identifier, e.g. `n01440764`.
    pub synset: &'static str,
    /// The synset's lemmas, comma-separated, e.g. `tench, Tinca tinca`.
    pub lemmas: &'static str,
}

impl ImageNetClass {
    /// The display name: the first lemma, e.g. `tench`. (Not unique: two classes are called
    /// `crane` and two `maillot`.)
    pub fn name(&self) -> &'static str {
        self.lemmas.split(',').next().unwrap_or(self.lemmas).trim()
    }
}

/// The 1000 classes, indexed by class index.
pub fn imagenet_classes() -> &'static [ImageNetClass] {
    static CLASSES: OnceLock<Vec<ImageNetClass>> = OnceLock::new();
    CLASSES.get_or_init(|| {
        let classes: Vec<ImageNetClass> = TABLE
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .enumerate()
            .map(|(index, line)| {
                let (synset, lemmas) = line
                    .split_once('\t')
                    .expect("imagenet_classes.tsv: every line is synset<TAB>lemmas");
                ImageNetClass {
                    index,
                    synset,
                    lemmas,
                }
            })
            .collect();
        assert_eq!(classes.len(), IMAGENET_NUM_CLASSES);
        classes
    })
}

/// The class with index `index`, if `index < 1000`.
pub fn imagenet_class(index: usize) -> Option<&'static ImageNetClass> {
    imagenet_classes().get(index)
}

/// The index of the class with synset identifier `synset` (e.g. `n01440764` gives `0`).
pub fn imagenet_index_of(synset: &str) -> Option<usize> {
    // The table is sorted by synset, so a binary search finds it.
    imagenet_classes()
        .binary_search_by(|c| c.synset.cmp(synset))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let c = imagenet_classes();
        assert_eq!(c.len(), 1000);
        assert_eq!((c[0].synset, c[0].name()), ("n01440764", "tench"));
        assert_eq!(c[0].lemmas, "tench, Tinca tinca");
        assert_eq!(
            (c[999].synset, c[999].name()),
            ("n15075141", "toilet tissue")
        );
        assert!(c.windows(2).all(|w| w[0].synset < w[1].synset));
        assert!(c.iter().enumerate().all(|(i, k)| k.index == i));
        assert_eq!(imagenet_index_of("n15075141"), Some(999));
        assert_eq!(
            imagenet_index_of("n02123045").map(|i| c[i].name()),
            Some("tabby")
        );
        assert_eq!(imagenet_index_of("n00000000"), None);
        assert_eq!(imagenet_class(1000), None);
    }
}
