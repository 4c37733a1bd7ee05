fn main() {
    eprintln!("being written");
}
