//! A pipeline with no dependencies at all: counts the primes below 100 000 with a sieve.
fn main() {
    const LIMIT: usize = 100_000;
    let mut composite = vec![false; LIMIT];
    let mut count = 0;
    for n in 2..LIMIT {
        if !composite[n] {
            count += 1;
            let mut multiple = n * n;
            while multiple < LIMIT {
                composite[multiple] = true;
                multiple += n;
            }
        }
    }
    println!("{count} primes below {LIMIT}");
}
