//! A network as a chain of stages (the stem, each level, the final pre-activation, the head),
//! so that training can keep only the stage inputs and recompute a stage's forward pass during
//! backward: the authors trained their 504x504 crops with MXNet's "mirror" option for the same
//! reason.

use candle_core::{Module, Result, Tensor};

/// A network whose forward pass is `stage(n-1)(... stage(1)(stage(0)(x)))`.
pub trait Stages {
    /// Number of stages.
    fn stage_count(&self) -> usize;

    /// Stage `stage`'s output for its input `x` (the previous stage's output, or the image).
    fn forward_stage(&self, stage: usize, x: &Tensor, train: bool) -> Result<Tensor>;
}

impl Stages for crate::Backbone {
    /// The stem, each level, and `relu7(bn7)`.
    fn stage_count(&self) -> usize {
        self.levels().len() + 2
    }

    fn forward_stage(&self, stage: usize, x: &Tensor, train: bool) -> Result<Tensor> {
        let levels = self.levels().len();
        match stage {
            0 => self.stem().forward(x),
            s if s <= levels => Ok(self.levels()[s - 1].forward_t(x, train)?.0),
            s if s == levels + 1 => self.final_pre_activation(x, train),
            s => candle_core::bail!("stage {s} of a backbone with {} stages", levels + 2),
        }
    }
}

impl Stages for crate::Classifier {
    /// The backbone's stages, then global pooling and `linear<C>`.
    fn stage_count(&self) -> usize {
        self.backbone().stage_count() + 1
    }

    fn forward_stage(&self, stage: usize, x: &Tensor, train: bool) -> Result<Tensor> {
        if stage < self.backbone().stage_count() {
            self.backbone().forward_stage(stage, x, train)
        } else {
            self.classify_features(x)
        }
    }
}

impl Stages for crate::CamClassifier {
    /// The backbone's stages, then global pooling and `fc8` (image-level scores).
    fn stage_count(&self) -> usize {
        self.backbone().stage_count() + 1
    }

    fn forward_stage(&self, stage: usize, x: &Tensor, train: bool) -> Result<Tensor> {
        if stage < self.backbone().stage_count() {
            self.backbone().forward_stage(stage, x, train)
        } else {
            self.scores(x)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackboneConfig, Classifier};
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};

    #[test]
    fn chained_stages_equal_the_forward_pass() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let config = BackboneConfig::preset(crate::Arch::A1, 8)
            .unwrap()
            .narrowed(32);
        let net = Classifier::new(&config, 5, &vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 40, 36), &Device::Cpu).unwrap();
        let mut t = x.clone();
        for stage in 0..net.stage_count() {
            t = net.forward_stage(stage, &t, false).unwrap();
        }
        let whole = net.forward_t(&x, false).unwrap();
        let diff = (t - whole).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        assert!(net.forward_stage(net.stage_count() + 1, &x, false).is_err());
    }
}
