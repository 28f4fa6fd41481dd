//! The JetStream servers the scale-out tests run against: the pinned current
//! `nats-server`, syncing every write before it acknowledges, alone and as a three-node
//! cluster that keeps a JetStream leader when a node is killed.

use std::time::Duration;

use crate::common::nats::Nats;

#[test]
fn the_pinned_server_syncs_every_write_alone_and_in_a_cluster_that_survives_a_node() {
    let single = Nats::single();
    let varz = single.nodes[0].monitor("varz").expect("the server answers");
    assert_eq!(varz["version"], "2.15.1", "{varz}");
    assert_eq!(varz["jetstream"]["config"]["sync_always"], true, "{varz}");

    let mut cluster = Nats::cluster(3);
    for node in &cluster.nodes {
        let jsz = node.monitor("jsz").expect("the node answers");
        assert_eq!(
            jsz["meta_cluster"]["cluster_size"], 3,
            "{}: {jsz}",
            node.name
        );
        assert_eq!(jsz["config"]["sync_always"], true, "{}: {jsz}", node.name);
    }
    // Kill -9 the meta leader: the other two elect another; restarted, it rejoins.
    let jsz = cluster.nodes[0].monitor("jsz").unwrap();
    let leader = jsz["meta_cluster"]["leader"].as_str().unwrap().to_owned();
    let i = cluster.nodes.iter().position(|n| n.name == leader).unwrap();
    cluster.nodes[i].kill();
    let started = std::time::Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|&j| j != i).collect();
    loop {
        let leaders: Vec<Option<String>> = survivors
            .iter()
            .map(|&j| {
                let jsz = cluster.nodes[j].monitor("jsz")?;
                jsz["meta_cluster"]["leader"].as_str().map(str::to_owned)
            })
            .collect();
        let new = leaders[0]
            .as_deref()
            .filter(|l| !l.is_empty() && *l != leader);
        if new.is_some() && leaders[0] == leaders[1] {
            println!(
                "{leader} killed; {new:?} leads after {:?}",
                started.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no new leader: {leaders:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.nodes[i].start();
    cluster.wait_ready(Duration::from_secs(30));
}
