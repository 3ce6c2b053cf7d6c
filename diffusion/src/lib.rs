//! # noisegrad-diffusion
//!
//! DDPM and DDIM on the noisegrad engine: [`schedule`] (β, ᾱ and posterior
//! tables), [`data`] (CIFAR-10, Fashion-MNIST, PNG folders).

pub mod autoencoder;
pub mod autoencoder_train;
pub mod classifier;
pub mod data;
pub mod diffusers_names;
pub mod export;
pub mod gaussian;
pub mod guidance;
pub mod image;
pub mod inpaint;
pub mod interpolate;
pub mod langevin;
pub mod latent;
pub mod objective;
pub mod parameterization;
pub mod process;
pub mod resample;
pub mod respace;
pub mod sample;
pub mod schedule;
pub mod train;
pub mod train_state;
pub mod unet;
pub mod variance;
pub mod vlb;
