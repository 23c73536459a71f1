//! Rule-based translation between the project's canonical tensor names and the PyTorch names of
//! the PSA "resnet38d" port (reference §6.1).
//!
//! Canonical names are the authors' MXNet parameter names without the `arg:`/`aux:` prefix
//! (`res4b3_branch2a_weight`, `bn4b3_branch2a_moving_var`, `bn7_gamma`, `linear1000_bias`, ...).
//! The mapping is derived from rules, not from a fixed table, so reduced-width or custom-depth
//! models (more or fewer units per level, other level numbers) translate too.
//!
//! | canonical | PSA |
//! |---|---|
//! | `bn{U}_{br}_gamma` / `_beta` / `_moving_mean` / `_moving_var` | `{M}.bn_{br}.weight` / `.bias` / `.running_mean` / `.running_var` |
//! | `res{U}_{br}_weight` | `{M}.conv_{br}.weight` |
//! | `bn{L}_gamma` ... (final BN, e.g. `bn7`) | `bn{L}.weight` ... |
//! | `{head}_weight` / `{head}_bias` | `{head}.weight` / `{head}.bias` |
//!
//! where unit `U` = `{L}a` ↔ module `M` = `b{L}`, unit `{L}b{i}` ↔ module `b{L}_{i}`; a branch
//! `br` is `branch` followed by lowercase letters/digits (`branch1`, `branch2a`, `branch2b1`,
//! `branch2b2`); `head` is any plain module token: lowercase letters followed by digits and
//! optionally more lowercase letters (`conv1a`, `conv6a`, `linear21`, `linear1000`, PSA's `fc8`),
//! excluding tokens of the BN / unit forms above. PSA itself drops `linear1000_*` and has no
//! `conv6a`/`linear{C}` head; these are mapped anyway so that a converted segmentation or
//! classification checkpoint round-trips. PyTorch's `*.num_batches_tracked` has no canonical
//! equivalent (MXNet does not count batches) and maps to `None`.

/// How PyTorch names the parameters of a BatchNorm, paired with the MXNet names.
const BN_PARAMS: [(&str, &str); 4] = [
    ("gamma", "weight"),
    ("beta", "bias"),
    ("moving_mean", "running_mean"),
    ("moving_var", "running_var"),
];

/// SEAM's pixel correlation module (`resnet38_SEAM`): 1×1 convs on level features.
pub const SEAM_PCM_MODULES: [&str; 3] = ["f8_3", "f8_4", "f9"];
/// 1-stage-wseg's segmentation decoder (`SoftMaxAE`).
pub const WSEG_DECODER_MODULES: [&str; 5] =
    ["aspp", "fc8_skip", "fc8_x", "last_conv", "shallow_mask"];

/// The first module of a PyTorch key, without `DataParallel`'s `module.` prefixes.
pub fn top_module(key: &str) -> &str {
    let mut key = key;
    while let Some(k) = key.strip_prefix("module.") {
        key = k;
    }
    key.split('.').next().unwrap_or(key)
}

/// Modules of networks built on resnet38d that r38 does not implement: they get no canonical
/// name (some, like SEAM's `f9`, would otherwise pass the plain-module rule).
fn is_foreign_module(module: &str) -> bool {
    SEAM_PCM_MODULES.contains(&module) || WSEG_DECODER_MODULES.contains(&module)
}

/// The PyTorch BatchNorm step counter, which has no MXNet equivalent.
pub const BATCH_COUNTER: &str = "num_batches_tracked";

/// `true` for a decimal number without a leading zero (`2`, `10`; not `02`, not empty).
fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0')
}

/// A residual unit id, split into level and index (`None` for the first unit `{L}a`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unit<'a> {
    level: &'a str,
    index: Option<&'a str>,
}

/// Parses a canonical unit id: `4a` or `4b3`.
fn parse_unit(s: &str) -> Option<Unit<'_>> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (level, rest) = s.split_at(split);
    if !is_number(level) {
        return None;
    }
    if rest == "a" {
        return Some(Unit { level, index: None });
    }
    let index = rest.strip_prefix('b')?;
    is_number(index).then_some(Unit {
        level,
        index: Some(index),
    })
}

/// Parses a PSA module name: `b4` or `b4_3`.
fn parse_module(s: &str) -> Option<Unit<'_>> {
    let rest = s.strip_prefix('b')?;
    match rest.split_once('_') {
        None => is_number(rest).then_some(Unit {
            level: rest,
            index: None,
        }),
        Some((level, index)) => (is_number(level) && is_number(index)).then_some(Unit {
            level,
            index: Some(index),
        }),
    }
}

impl Unit<'_> {
    fn canonical(&self) -> String {
        match self.index {
            None => format!("{}a", self.level),
            Some(i) => format!("{}b{}", self.level, i),
        }
    }

    fn module(&self) -> String {
        match self.index {
            None => format!("b{}", self.level),
            Some(i) => format!("b{}_{}", self.level, i),
        }
    }
}

/// `branch` followed by at least one lowercase ASCII letter or digit.
fn is_branch(s: &str) -> bool {
    s.strip_prefix("branch").is_some_and(|r| {
        !r.is_empty()
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

/// A plain head/stem module token: `[a-z]+[0-9]+[a-z]*`, not of a BN or unit form.
fn is_plain_module(s: &str) -> bool {
    let letters = s.bytes().take_while(u8::is_ascii_lowercase).count();
    let digits = s[letters..].bytes().take_while(u8::is_ascii_digit).count();
    let tail = &s[letters + digits..];
    letters > 0
        && digits > 0
        && tail.bytes().all(|b| b.is_ascii_lowercase())
        && !is_final_bn(s)
        && s.strip_prefix("bn").and_then(parse_unit).is_none()
        && s.strip_prefix("res").and_then(parse_unit).is_none()
        && parse_module(s).is_none()
}

/// `bn{L}`: a BN that belongs to no unit (the final `bn7`).
fn is_final_bn(s: &str) -> bool {
    s.strip_prefix("bn").is_some_and(is_number)
}

/// Translates a canonical name to the PSA PyTorch state-dict key, or `None` if the name follows
/// none of the rules (see the module documentation).
pub fn canonical_to_psa(name: &str) -> Option<String> {
    let (head, rest) = name.split_once('_')?;
    if let Some(unit) = head.strip_prefix("bn").and_then(parse_unit) {
        let (branch, param) = rest.split_once('_')?;
        let (_, torch) = BN_PARAMS.iter().find(|(mx, _)| *mx == param)?;
        return is_branch(branch).then(|| format!("{}.bn_{branch}.{torch}", unit.module()));
    }
    if let Some(unit) = head.strip_prefix("res").and_then(parse_unit) {
        let branch = rest.strip_suffix("_weight")?;
        return is_branch(branch).then(|| format!("{}.conv_{branch}.weight", unit.module()));
    }
    if is_final_bn(head) {
        let (_, torch) = BN_PARAMS.iter().find(|(mx, _)| *mx == rest)?;
        return Some(format!("{head}.{torch}"));
    }
    if is_plain_module(head) && (rest == "weight" || rest == "bias") {
        return Some(format!("{head}.{rest}"));
    }
    None
}

/// Translates a PSA PyTorch state-dict key to its canonical name, or `None` when it has no
/// canonical equivalent (`num_batches_tracked`, unknown modules). Leading `module.` prefixes
/// (added by `DataParallel`) are removed first.
pub fn psa_to_canonical(key: &str) -> Option<String> {
    let mut key = key;
    while let Some(k) = key.strip_prefix("module.") {
        key = k;
    }
    if is_foreign_module(top_module(key)) {
        return None;
    }
    let parts: Vec<&str> = key.split('.').collect();
    match parts.as_slice() {
        [module, sub, param] => {
            let unit = parse_module(module)?;
            if let Some(branch) = sub.strip_prefix("bn_") {
                let (mx, _) = BN_PARAMS.iter().find(|(_, t)| t == param)?;
                is_branch(branch).then(|| format!("bn{}_{branch}_{mx}", unit.canonical()))
            } else if let Some(branch) = sub.strip_prefix("conv_") {
                (*param == "weight" && is_branch(branch))
                    .then(|| format!("res{}_{branch}_weight", unit.canonical()))
            } else {
                None
            }
        }
        [module, param] => {
            if is_final_bn(module) {
                let (mx, _) = BN_PARAMS.iter().find(|(_, t)| t == param)?;
                Some(format!("{module}_{mx}"))
            } else if is_plain_module(module) && (*param == "weight" || *param == "bias") {
                Some(format!("{module}_{param}"))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Canonical name for a tensor name found in a PyTorch or safetensors file: names with a `.` are
/// PyTorch module paths and go through [`psa_to_canonical`]; names without one are taken to be
/// canonical already (our own exports), after removing an `arg:`/`aux:` prefix.
pub fn to_canonical(name: &str) -> Option<String> {
    if name.contains('.') {
        psa_to_canonical(name)
    } else {
        let bare = strip_mxnet_prefix(name);
        (!bare.is_empty()).then(|| bare.to_string())
    }
}

/// Removes an MXNet `arg:` or `aux:` prefix; other names are returned unchanged.
pub fn strip_mxnet_prefix(name: &str) -> &str {
    name.strip_prefix("arg:")
        .or_else(|| name.strip_prefix("aux:"))
        .unwrap_or(name)
}

/// `true` for BN running statistics (MXNet auxiliary states), which are not trained by SGD.
pub fn is_running_stat(canonical: &str) -> bool {
    canonical.ends_with("_moving_mean") || canonical.ends_with("_moving_var")
}

/// The full MXNet key of a canonical name: `aux:` for BN running statistics, `arg:` otherwise.
pub fn mxnet_key(canonical: &str) -> String {
    if is_running_stat(canonical) {
        format!("aux:{canonical}")
    } else {
        format!("arg:{canonical}")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One residual unit as listed in Appendix A: unit id, branches with their BNs, and whether
    /// it has a projection shortcut.
    fn units() -> Vec<(String, Vec<&'static str>, bool)> {
        let mut out = Vec::new();
        for (level, count) in [(2, 3), (3, 3), (4, 6), (5, 3)] {
            for u in 0..count {
                let id = if u == 0 {
                    format!("{level}a")
                } else {
                    format!("{level}b{u}")
                };
                out.push((id, vec!["branch2a", "branch2b1"], u == 0));
            }
        }
        for level in [6, 7] {
            out.push((
                format!("{level}a"),
                vec!["branch2a", "branch2b1", "branch2b2"],
                true,
            ));
        }
        out
    }

    /// The 193 full MXNet keys of `ilsvrc-cls_rna-a1_cls1000_ep-0001.params`, generated from the
    /// naming rules of reference Appendix A.
    pub(crate) fn a1_cls_keys() -> Vec<String> {
        let mut keys = vec!["arg:conv1a_weight".to_string()];
        for (unit, branches, projection) in units() {
            for br in branches {
                keys.push(format!("arg:bn{unit}_{br}_gamma"));
                keys.push(format!("arg:bn{unit}_{br}_beta"));
                keys.push(format!("aux:bn{unit}_{br}_moving_mean"));
                keys.push(format!("aux:bn{unit}_{br}_moving_var"));
                keys.push(format!("arg:res{unit}_{br}_weight"));
            }
            if projection {
                keys.push(format!("arg:res{unit}_branch1_weight"));
            }
        }
        for p in ["arg:bn7_gamma", "arg:bn7_beta", "aux:bn7_moving_mean"] {
            keys.push(p.to_string());
        }
        keys.push("aux:bn7_moving_var".to_string());
        keys.push("arg:linear1000_weight".to_string());
        keys.push("arg:linear1000_bias".to_string());
        keys
    }

    #[test]
    fn appendix_a_counts() {
        let keys = a1_cls_keys();
        assert_eq!(keys.len(), 193);
        assert_eq!(keys.iter().filter(|k| k.starts_with("arg:")).count(), 119);
        assert_eq!(keys.iter().filter(|k| k.starts_with("aux:")).count(), 74);
    }

    #[test]
    fn all_193_names_round_trip() {
        for key in a1_cls_keys() {
            let canonical = strip_mxnet_prefix(&key);
            assert_eq!(mxnet_key(canonical), key);
            let psa = canonical_to_psa(canonical)
                .unwrap_or_else(|| panic!("{canonical} has no PSA name"));
            assert_eq!(psa_to_canonical(&psa).as_deref(), Some(canonical), "{psa}");
            assert_eq!(
                psa_to_canonical(&format!("module.{psa}")).as_deref(),
                Some(canonical)
            );
            assert_eq!(to_canonical(&psa).as_deref(), Some(canonical));
            assert_eq!(to_canonical(&key).as_deref(), Some(canonical));
        }
    }

    #[test]
    fn psa_examples_from_the_reference() {
        let cases = [
            ("conv1a_weight", "conv1a.weight"),
            ("bn4b3_branch2a_gamma", "b4_3.bn_branch2a.weight"),
            ("bn4b3_branch2a_beta", "b4_3.bn_branch2a.bias"),
            (
                "bn4b3_branch2a_moving_mean",
                "b4_3.bn_branch2a.running_mean",
            ),
            ("bn4b3_branch2a_moving_var", "b4_3.bn_branch2a.running_var"),
            ("res4b3_branch2a_weight", "b4_3.conv_branch2a.weight"),
            ("res6a_branch2b2_weight", "b6.conv_branch2b2.weight"),
            ("res2a_branch1_weight", "b2.conv_branch1.weight"),
            ("bn7_gamma", "bn7.weight"),
            ("bn7_moving_var", "bn7.running_var"),
            ("linear1000_weight", "linear1000.weight"),
            ("linear1000_bias", "linear1000.bias"),
            ("conv6a_weight", "conv6a.weight"),
            ("conv6a_bias", "conv6a.bias"),
            ("linear21_weight", "linear21.weight"),
            ("linear21_bias", "linear21.bias"),
            ("fc8_weight", "fc8.weight"),
            // custom depth: two-digit unit index and level
            ("res4b12_branch2b1_weight", "b4_12.conv_branch2b1.weight"),
            ("bn10b1_branch2a_gamma", "b10_1.bn_branch2a.weight"),
        ];
        for (canonical, psa) in cases {
            assert_eq!(canonical_to_psa(canonical).as_deref(), Some(psa));
            assert_eq!(psa_to_canonical(psa).as_deref(), Some(canonical));
        }
    }

    #[test]
    fn unmappable_names() {
        for psa in [
            "b4_3.bn_branch2a.num_batches_tracked",
            "bn7.num_batches_tracked",
            "b4_3.bn_branch2a.foo",
            "b4_3.conv_branch2a.bias",
            "b4_03.conv_branch2a.weight",
            "b4_3.relu.weight",
            "b.conv_branch2a.weight",
            "b2.weight",
            "bn7.gamma",
            "conv1a.running_mean",
            "a.b.c.d",
            "",
            "module.",
            // SEAM's PCM and 1-stage-wseg's decoder: not ResNet-38 tensors, even where the
            // plain-module rule would accept the name.
            "f9.weight",
            "module.f8_3.weight",
            "aspp.conv1.weight",
            "last_conv.0.weight",
        ] {
            assert_eq!(psa_to_canonical(psa), None, "{psa}");
        }
        assert_eq!(
            psa_to_canonical("module.fc8.weight").as_deref(),
            Some("fc8_weight")
        );
        for canonical in [
            "res4b3_branch2a_bias",
            "bn4b3_branch2a_weight",
            "bn4b3_foo_gamma",
            "bn4c3_branch2a_gamma",
            "bn7_weight",
            "res4a_weight",
            "conv1a",
            "conv1a_gamma",
            "",
            "b2_weight",
        ] {
            assert_eq!(canonical_to_psa(canonical), None, "{canonical}");
        }
    }

    #[test]
    fn prefixes() {
        assert_eq!(strip_mxnet_prefix("arg:conv1a_weight"), "conv1a_weight");
        assert_eq!(strip_mxnet_prefix("aux:bn7_moving_var"), "bn7_moving_var");
        assert_eq!(strip_mxnet_prefix("conv1a_weight"), "conv1a_weight");
        assert_eq!(
            mxnet_key("bn2a_branch2a_moving_mean"),
            "aux:bn2a_branch2a_moving_mean"
        );
        assert_eq!(mxnet_key("bn2a_branch2a_gamma"), "arg:bn2a_branch2a_gamma");
        assert_eq!(to_canonical("arg:"), None);
        assert_eq!(
            psa_to_canonical("module.module.conv1a.weight").as_deref(),
            Some("conv1a_weight")
        );
    }
}
