//! Classify the shipped Fashion-MNIST items and segment a shipped scene, as `r38 demo` does.
use r38::{data::datasets::write_label_png, load_image, Device, Pretrained};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cpu = Device::Cpu;
    let classifier = Pretrained::load("weights/fashion-mnist-classifier.safetensors", &cpu)?;
    for item in std::fs::read_dir("samples/fashion-items")? {
        let path = item?.path();
        let top = &classifier.classify(&load_image(&path)?)?[0];
        println!("{}: {} ({:.3})", path.display(), top.name, top.probability);
    }
    let segmenter = Pretrained::load("weights/fashion-scenes-segmenter.safetensors", &cpu)?;
    let scene = load_image("samples/fashion-scenes/JPEGImages/scene-00000.png")?;
    let labels = segmenter.segment(&scene)?.label_map()?;
    write_label_png("scene-00000.png", &labels, Some(&segmenter.palette()))?;
    Ok(())
}
