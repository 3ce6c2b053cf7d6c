//! # noisegrad-diffusion
//!
//! DDPM and DDIM on the noisegrad engine: [`schedule`] (β, ᾱ and posterior
//! tables), [`data`] (CIFAR-10, Fashion-MNIST, PNG folders).

pub mod autoencoder;
pub mod autoencoder_train;
pub mod data;
pub mod gaussian;
pub mod image;
pub mod latent;
pub mod process;
pub mod sample;
pub mod schedule;
pub mod train;
pub mod train_state;
pub mod unet;
pub mod vlb;
