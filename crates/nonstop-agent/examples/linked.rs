//! A Rust program that links the agent and starts it itself (no `LD_PRELOAD`):
//! `NONSTOP_RULES=rules.json NONSTOP_OUT=out.jsonl cargo run -p nonstop-agent --example linked`.

#[inline(never)]
fn greet(name: &str, times: u32) -> String {
    let line = format!("hello {name} x{times}");
    std::hint::black_box(&line); // @mark greet
    line
}

fn main() {
    let running = nonstop_agent::start();
    eprintln!("agent running: {running}");
    for (i, name) in ["ann", "bob"].iter().enumerate() {
        println!("{}", greet(name, i as u32 + 1));
    }
}
