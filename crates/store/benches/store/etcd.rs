//! The etcd measurements (filled in once the etcd backend lands).

use crate::measure::Table;

pub async fn single(_table: &mut Table) {
    eprintln!("etcd: not built yet");
}

pub async fn three(_table: &mut Table) {
    eprintln!("etcd3: not built yet");
}

pub async fn failover() {
    eprintln!("failover: not built yet");
}
