//! The dashboard binary that trunk builds for `wasm32-unknown-unknown`.

fn main() {
    daig_web::start();
}
