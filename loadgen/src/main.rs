fn main() {
    println!("loadgen: in progress");
}
