//! Writes the man pages and shell completions the Debian package ships, from
//! the clap definitions:
//!
//!     cargo run --example generate [-- DIR]     (DIR defaults to packaging/)

fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "packaging".into());
    avala_mirror::packaging::generate(std::path::Path::new(&out))?;
    println!("wrote {out}/man and {out}/completions");
    Ok(())
}
