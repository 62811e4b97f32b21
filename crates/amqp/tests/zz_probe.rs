use bytes::{BufMut, Bytes, BytesMut};
use postroom_amqp::FieldTable;
use postroom_amqp::wire::Reader;

fn nested(depth: usize, letter: u8) -> Bytes {
    // table { "k": A[A[A[...]]] }
    let mut inner = BytesMut::new();
    if letter == b'A' {
        inner.put_u8(b'A');
        inner.put_u32(0);
        for _ in 1..depth {
            let mut next = BytesMut::with_capacity(inner.len() + 5);
            next.put_u8(b'A');
            next.put_u32(inner.len() as u32);
            next.put_slice(&inner);
            inner = next;
        }
    } else {
        inner.put_u8(b'F');
        inner.put_u32(0);
        for _ in 1..depth {
            let mut next = BytesMut::with_capacity(inner.len() + 6);
            next.put_u8(b'F');
            next.put_u32(inner.len() as u32 + 1);
            next.put_u8(0);
            next.put_slice(&inner);
            inner = next;
        }
    }
    let mut t = BytesMut::new();
    t.put_u32(inner.len() as u32 + 2);
    t.put_u8(1);
    t.put_u8(b'k');
    t.put_slice(&inner);
    t.freeze()
}

#[test]
#[ignore]
fn probe_child() {
    let depth: usize = std::env::var("DEPTH").unwrap().parse().unwrap();
    let stack: usize = std::env::var("STACK").unwrap().parse().unwrap();
    let letter = std::env::var("LETTER").unwrap().as_bytes()[0];
    let data = nested(depth, letter);
    let r = std::thread::Builder::new().stack_size(stack).spawn(move || {
        let mut r = Reader::new(&data);
        FieldTable::decode(&mut r).is_ok()
    }).unwrap().join().unwrap();
    println!("ok={r}");
}

fn survives(depth: usize, stack: usize, letter: &str) -> bool {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "probe_child", "--nocapture", "--test-threads=1"])
        .env("DEPTH", depth.to_string()).env("STACK", stack.to_string()).env("LETTER", letter)
        .output().unwrap();
    out.status.success()
}

#[test]
#[ignore]
fn probe() {
    for letter in ["A", "F"] {
    for stack in [2usize << 20, 8 << 20] {
        let (mut lo, mut hi) = (1usize, 2_000_000usize);
        if survives(hi, stack, letter) { println!("{letter} stack {stack}: survives {hi}"); continue; }
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if survives(mid, stack, letter) { lo = mid } else { hi = mid }
        }
        println!("{letter} stack {stack}: max ok depth {lo}, crash at {hi}");
    }
    }
}
