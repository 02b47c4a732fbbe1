//! Workloads for the scheduler benchmarks: nodes and jobs, from the
//! production traces in `../shared/traces/` or made up.
//!
//! GPUs: the 2023 trace shares GPUs (a task may ask for 0.46 of one). Berth
//! counts extended resources in whole units, so the replay counts `gpu` in
//! thousandths of a GPU: a node with 8 GPUs offers 8000, a task asking for
//! 0.46 of one asks 460. That treats a node's GPUs as one divisible pool —
//! kinder than real devices, where a share must fit on one GPU.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use berth_agent::sim::SimNode;
use berth_proto::pb;

/// Node label naming a GPU node's model (for `gpu_spec` constraints).
pub const GPU_MODEL_LABEL: &str = "gpu-model";

/// Summed CPU (millicores), memory (bytes) and GPU (thousandths).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub cpu: f64,
    pub memory: f64,
    pub gpu: f64,
}

impl Totals {
    pub fn of(r: &pb::Resources) -> Totals {
        Totals {
            cpu: r.cpu_millis as f64,
            memory: r.memory_bytes as f64,
            gpu: r.extended.get("gpu").copied().unwrap_or(0) as f64,
        }
    }

    pub fn add(&mut self, other: Totals, times: f64) {
        self.cpu += other.cpu * times;
        self.memory += other.memory * times;
        self.gpu += other.gpu * times;
    }

    /// Each component as a percentage of `capacity`'s.
    pub fn percent_of(&self, capacity: &Totals) -> String {
        let pct = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:5.1}%", 100.0 * a / b)
            } else {
                "    - ".to_string()
            }
        };
        format!(
            "cpu {} mem {} gpu {}",
            pct(self.cpu, capacity.cpu),
            pct(self.memory, capacity.memory),
            pct(self.gpu, capacity.gpu)
        )
    }
}

/// The allocation when the first task was refused, for the tables.
pub fn first_refusal(at: Option<Totals>, capacity: &Totals) -> String {
    at.map_or("none: every task fit".to_string(), |t| {
        t.percent_of(capacity)
    })
}

pub struct Workload {
    pub name: String,
    /// Jobs whose tasks fit no node even when the cluster is empty (their
    /// refusal says nothing about packing).
    pub never_fit: std::collections::HashSet<String>,
    pub nodes: Vec<SimNode>,
    /// Jobs in submission order.
    pub jobs: Vec<pb::Object>,
    pub tasks: u64,
    pub capacity: Totals,
    /// What all the jobs ask for together.
    pub demand: Totals,
}

impl Workload {
    fn new(name: String, nodes: Vec<SimNode>, jobs: Vec<pb::Object>) -> Workload {
        let mut capacity = Totals::default();
        for node in &nodes {
            capacity.add(Totals::of(&node.allocatable), 1.0);
        }
        let mut demand = Totals::default();
        let mut tasks = 0;
        for job in &jobs {
            let spec = job.as_job().and_then(|j| j.spec.as_ref());
            let replicas = spec.map_or(0, |s| s.replicas);
            let asked = spec
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.resources.as_ref())
                .map(Totals::of)
                .unwrap_or_default();
            demand.add(asked, f64::from(replicas));
            tasks += u64::from(replicas);
        }
        let never_fit = jobs
            .iter()
            .filter(|job| !fits_somewhere(job, &nodes))
            .map(|job| job.name().to_string())
            .collect();
        Workload {
            name,
            never_fit,
            nodes,
            jobs,
            tasks,
            capacity,
            demand,
        }
    }
}

fn node(
    name: String,
    cpu: i64,
    memory: i64,
    gpu_milli: i64,
    labels: BTreeMap<String, String>,
) -> SimNode {
    let extended = if gpu_milli > 0 {
        [("gpu".to_string(), gpu_milli)].into()
    } else {
        BTreeMap::new()
    };
    SimNode {
        name,
        allocatable: pb::Resources {
            cpu_millis: cpu,
            memory_bytes: memory,
            extended,
        },
        labels,
    }
}

fn job(
    name: String,
    tier: pb::Tier,
    replicas: u32,
    resources: pb::Resources,
    constraints: Vec<pb::LabelRequirement>,
) -> pb::Object {
    pb::Object::from(pb::Job {
        metadata: Some(pb::ObjectMeta {
            name,
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(pb::JobSpec {
            tier: tier as i32,
            replicas,
            template: Some(pb::TaskTemplate {
                image: "simulated".into(),
                resources: Some(resources),
                ..Default::default()
            }),
            constraints,
            ..Default::default()
        }),
        status: None,
    })
}

/// Rows of a CSV file (after the header), split on commas.
fn rows(path: &Path, header: bool) -> anyhow::Result<Vec<Vec<String>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .skip(usize::from(header))
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').map(|f| f.trim().to_string()).collect())
        .collect())
}

fn field<'a>(row: &'a [String], i: usize, path: &Path, line: usize) -> anyhow::Result<&'a str> {
    row.get(i)
        .map(String::as_str)
        .with_context(|| format!("{}: line {line}: no column {i}", path.display()))
}

fn number(row: &[String], i: usize, path: &Path, line: usize) -> anyhow::Result<f64> {
    let text = field(row, i, path, line)?;
    text.parse().with_context(|| {
        format!(
            "{}: line {line}: column {i}: {text:?} is not a number",
            path.display()
        )
    })
}

/// The Alibaba GPU cluster trace of 2023: 1,523 nodes, 8,152 tasks; `LS`
/// (latency-sensitive) tasks are prod, the others batch; one job per task,
/// in creation order.
pub fn openb(traces: &Path) -> anyhow::Result<Workload> {
    let node_file = traces.join("openb_node_list_all_node.csv");
    let mut nodes = Vec::new();
    for (i, row) in rows(&node_file, true)?.iter().enumerate() {
        let line = i + 2;
        let mut labels = BTreeMap::new();
        let model = field(row, 4, &node_file, line).unwrap_or("");
        if !model.is_empty() {
            labels.insert(GPU_MODEL_LABEL.to_string(), model.to_string());
        }
        nodes.push(node(
            field(row, 0, &node_file, line)?.to_ascii_lowercase(),
            number(row, 1, &node_file, line)? as i64,
            number(row, 2, &node_file, line)? as i64 * (1 << 20),
            number(row, 3, &node_file, line)? as i64 * 1000,
            labels,
        ));
    }
    let pod_file = traces.join("openb_pod_list_default.csv");
    let mut pods: Vec<(f64, pb::Object)> = Vec::new();
    for (i, row) in rows(&pod_file, true)?.iter().enumerate() {
        let line = i + 2;
        let gpus = number(row, 3, &pod_file, line)? as i64;
        let share = number(row, 4, &pod_file, line)? as i64;
        let gpu_milli = if gpus == 1 && share > 0 {
            share
        } else {
            gpus * 1000
        };
        let mut extended = BTreeMap::new();
        if gpu_milli > 0 {
            extended.insert("gpu".to_string(), gpu_milli);
        }
        let resources = pb::Resources {
            cpu_millis: (number(row, 1, &pod_file, line)? as i64).max(1),
            memory_bytes: (number(row, 2, &pod_file, line)? as i64).max(1) * (1 << 20),
            extended,
        };
        let models: Vec<String> = field(row, 5, &pod_file, line)?
            .split('|')
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .collect();
        let constraints = if models.is_empty() {
            Vec::new()
        } else {
            vec![pb::LabelRequirement {
                key: GPU_MODEL_LABEL.into(),
                operator: pb::Operator::In as i32,
                values: models,
            }]
        };
        let tier = if field(row, 6, &pod_file, line)? == "LS" {
            pb::Tier::Prod
        } else {
            pb::Tier::Batch
        };
        let created = number(row, 8, &pod_file, line)?;
        let name = field(row, 0, &pod_file, line)?.to_ascii_lowercase();
        pods.push((created, job(name, tier, 1, resources, constraints)));
    }
    pods.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(Workload::new(
        "openb (Alibaba GPU cluster 2023)".into(),
        nodes,
        pods.into_iter().map(|(_, j)| j).collect(),
    ))
}

/// Memory of the largest machine of the 2017 trace (the trace normalizes
/// memory to it; the figure itself only scales the numbers shown).
const ALIBABA_2017_MACHINE_MEMORY: i64 = 256 << 30;

/// The Alibaba cluster trace of 2017: machines from the server events
/// (`add`), batch tasks in creation order, each row a job of
/// `number_of_instances` replicas, cut at `limit` tasks in all.
pub fn alibaba2017(traces: &Path, limit: u64) -> anyhow::Result<Workload> {
    let event_file = traces.join("alibaba2017_server_event.csv");
    let mut machines: BTreeMap<u64, SimNode> = BTreeMap::new();
    for (i, row) in rows(&event_file, false)?.iter().enumerate() {
        let line = i + 1;
        if field(row, 2, &event_file, line)? != "add" {
            continue;
        }
        let id = number(row, 1, &event_file, line)? as u64;
        let cpu = (number(row, 4, &event_file, line)? * 1000.0) as i64;
        let memory =
            (number(row, 5, &event_file, line)? * ALIBABA_2017_MACHINE_MEMORY as f64) as i64;
        machines.insert(id, node(format!("m{id}"), cpu, memory, 0, BTreeMap::new()));
    }
    let task_file = traces.join("alibaba2017_batch_task.csv");
    let mut rows_by_time: Vec<(f64, String, u64, i64, i64)> = Vec::new();
    for (i, row) in rows(&task_file, true)?.iter().enumerate() {
        let line = i + 2;
        let (cpu, memory) = (
            field(row, 6, &task_file, line)?,
            field(row, 7, &task_file, line)?,
        );
        if field(row, 5, &task_file, line)? != "Terminated" || cpu.is_empty() || memory.is_empty() {
            continue;
        }
        let cpu_millis = (number(row, 6, &task_file, line)? * 10.0) as i64;
        let memory_bytes =
            (number(row, 7, &task_file, line)? * ALIBABA_2017_MACHINE_MEMORY as f64) as i64;
        if cpu_millis <= 0 || memory_bytes <= 0 {
            continue;
        }
        let name = format!(
            "a17-j{}-t{}",
            field(row, 2, &task_file, line)?,
            field(row, 3, &task_file, line)?
        );
        let instances = number(row, 4, &task_file, line)? as u64;
        let created = number(row, 0, &task_file, line)?;
        rows_by_time.push((created, name, instances, cpu_millis, memory_bytes));
    }
    rows_by_time.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut jobs = Vec::new();
    let mut left = limit;
    for (_, name, instances, cpu, memory) in rows_by_time {
        if left == 0 {
            break;
        }
        let replicas = instances.min(left);
        left -= replicas;
        let resources = pb::Resources {
            cpu_millis: cpu,
            memory_bytes: memory,
            ..Default::default()
        };
        jobs.push(job(
            name,
            pb::Tier::Batch,
            replicas as u32,
            resources,
            Vec::new(),
        ));
    }
    if machines.is_empty() {
        bail!("{}: no machine was added", event_file.display());
    }
    Ok(Workload::new(
        format!("Alibaba 2017 batch, first {limit} tasks"),
        machines.into_values().collect(),
        jobs,
    ))
}

/// `nodes` nodes of 32 CPU and 128 GiB in 3 zones, and `tasks` tasks in
/// jobs of 100: a tenth prod, shapes cycling through common sizes.
pub fn synthetic(nodes: usize, tasks: u64) -> Workload {
    let nodes = (0..nodes)
        .map(|i| {
            let labels = [("zone".to_string(), format!("zone-{}", i % 3))].into();
            node(format!("node-{i}"), 32_000, 128 << 30, 0, labels)
        })
        .collect();
    let shapes: [(i64, i64); 6] = [
        (250, 512 << 20),
        (500, 1 << 30),
        (1000, 2 << 30),
        (2000, 4 << 30),
        (500, 4 << 30),
        (4000, 8 << 30),
    ];
    let per_job = 100;
    let jobs = (0..tasks.div_ceil(per_job))
        .map(|j| {
            let replicas = per_job.min(tasks - j * per_job) as u32;
            let (cpu, memory) = shapes[j as usize % shapes.len()];
            let tier = if j % 10 == 0 {
                pb::Tier::Prod
            } else {
                pb::Tier::Batch
            };
            let resources = pb::Resources {
                cpu_millis: cpu,
                memory_bytes: memory,
                ..Default::default()
            };
            job(
                format!("synthetic-{j}"),
                tier,
                replicas,
                resources,
                Vec::new(),
            )
        })
        .collect();
    Workload::new("synthetic".into(), nodes, jobs)
}

/// Whether one task of `job` fits some node of an empty cluster: enough
/// CPU, memory and GPU, and the labels its constraints ask for. (The
/// workloads here only use `In` constraints.)
fn fits_somewhere(job: &pb::Object, nodes: &[SimNode]) -> bool {
    let Some(spec) = job.as_job().and_then(|j| j.spec.as_ref()) else {
        return false;
    };
    let asked = spec
        .template
        .as_ref()
        .and_then(|t| t.resources.as_ref())
        .map(Totals::of)
        .unwrap_or_default();
    nodes.iter().any(|node| {
        let has = Totals::of(&node.allocatable);
        let labels_match = spec.constraints.iter().all(|c| {
            node.labels
                .get(&c.key)
                .is_some_and(|v| c.values.contains(v))
        });
        labels_match && asked.cpu <= has.cpu && asked.memory <= has.memory && asked.gpu <= has.gpu
    })
}
