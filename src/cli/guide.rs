//! What `sample` needs to steer generation: the classes asked for, and
//! the checks that a classifier fits the diffusion model.

use noisegrad::diffusion::classifier::LoadedClassifier;
use noisegrad::diffusion::unet::UNetConfig;
use noisegrad::engine::{Error, Result};

/// The classes asked for by `--class`: a number in 0..K, a class name, or
/// `all` (every class, `per_class` times each, class by class).
pub fn parse_classes(
    spec: &str,
    names: &[String],
    k: usize,
    per_class: usize,
) -> Result<Vec<usize>> {
    if spec == "all" {
        return Ok((0..k)
            .flat_map(|y| std::iter::repeat_n(y, per_class))
            .collect());
    }
    let class = match spec.parse::<usize>() {
        Ok(y) if y < k => y,
        Ok(y) => {
            return Err(Error::Config(format!(
                "--class {y} is outside 0..{k} (the model has {k} classes)"
            )));
        }
        Err(_) => names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(spec))
            .ok_or_else(|| {
                Error::Config(format!(
                    "--class '{spec}' is not a class name of this model (classes: {})",
                    names.join(", ")
                ))
            })?,
    };
    Ok(vec![class; per_class])
}

/// A classifier must see the images the model makes, at the model's T.
pub fn check_classifier_fits(c: &LoadedClassifier, model: &UNetConfig, steps: usize) -> Result<()> {
    let m = &c.model.config;
    let mismatch = |what: &str, a: String, b: String| {
        Err(Error::Config(format!(
            "the classifier was trained for {what} {a} but the diffusion model has {b}"
        )))
    };
    if m.image_size != model.image_size {
        return mismatch(
            "image size",
            m.image_size.to_string(),
            model.image_size.to_string(),
        );
    }
    if m.in_channels != model.in_channels {
        return mismatch(
            "channel count",
            m.in_channels.to_string(),
            model.in_channels.to_string(),
        );
    }
    if c.diffusion_steps != steps {
        return mismatch("T =", c.diffusion_steps.to_string(), steps.to_string());
    }
    if let Some(k) = model.num_classes
        && Some(k) != m.num_classes
    {
        return mismatch("classes:", format!("{:?}", m.num_classes), k.to_string());
    }
    Ok(())
}
