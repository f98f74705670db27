//! The `needs` graph. Nodes are stage indices in file order; `needs[i]`
//! lists the stages stage `i` waits for. All walks are iterative so a huge
//! or adversarial file cannot overflow the stack.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Kahn's algorithm with a min-heap, so ties keep file order and the result
/// is deterministic. Nodes stuck in cycles are appended in file order.
pub(super) fn topo_order(needs: &[Vec<usize>]) -> Vec<usize> {
    let n = needs.len();
    let mut pending = vec![0usize; n];
    let mut dependents = vec![Vec::new(); n];
    for (i, deps) in needs.iter().enumerate() {
        let mut deps = deps.clone();
        deps.sort_unstable();
        deps.dedup();
        pending[i] = deps.len();
        for d in deps {
            dependents[d].push(i);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| pending[i] == 0).map(Reverse).collect();
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(i)) = ready.pop() {
        done[i] = true;
        order.push(i);
        for &d in &dependents[i] {
            pending[d] -= 1;
            if pending[d] == 0 {
                ready.push(Reverse(d));
            }
        }
    }
    order.extend((0..n).filter(|&i| !done[i]));
    order
}

/// Which nodes (transitively) need `start`; `start` itself is marked too.
pub(super) fn reverse_reachable(needs: &[Vec<usize>], start: usize) -> Vec<bool> {
    let n = needs.len();
    let mut dependents = vec![Vec::new(); n];
    for (i, deps) in needs.iter().enumerate() {
        for &d in deps {
            dependents[d].push(i);
        }
    }
    let mut seen = vec![false; n];
    let mut queue = VecDeque::from([start]);
    seen[start] = true;
    while let Some(i) = queue.pop_front() {
        for &d in &dependents[i] {
            if !seen[d] {
                seen[d] = true;
                queue.push_back(d);
            }
        }
    }
    seen
}

/// One cycle per strongly connected component of two or more nodes (self
/// loops are reported elsewhere). Each cycle starts at its component's first
/// stage in file order and is a shortest way back to it; cycles are sorted by
/// that first stage. A cycle `[a, b]` means a needs b, b needs a.
pub(super) fn cycles(needs: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = sccs(needs)
        .into_iter()
        .filter(|c| c.len() > 1)
        .filter_map(|comp| shortest_cycle(needs, &comp))
        .collect();
    out.sort();
    out
}

/// Tarjan's algorithm, iteratively.
fn sccs(needs: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = needs.len();
    let mut index: Vec<Option<usize>> = vec![None; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut next = 0;
    let mut out = Vec::new();
    for root in 0..n {
        if index[root].is_some() {
            continue;
        }
        index[root] = Some(next);
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        // (node, position of the next edge to follow)
        let mut calls = vec![(root, 0usize)];
        while let Some(&(v, ei)) = calls.last() {
            if let Some(&w) = needs[v].get(ei) {
                if let Some(top) = calls.last_mut() {
                    top.1 += 1;
                }
                match index[w] {
                    None => {
                        index[w] = Some(next);
                        low[w] = next;
                        next += 1;
                        stack.push(w);
                        on_stack[w] = true;
                        calls.push((w, 0));
                    }
                    Some(iw) if on_stack[w] => low[v] = low[v].min(iw),
                    Some(_) => {}
                }
            } else {
                calls.pop();
                if let Some(&(u, _)) = calls.last() {
                    low[u] = low[u].min(low[v]);
                }
                if Some(low[v]) == index[v] {
                    let mut comp = Vec::new();
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        comp.push(w);
                        if w == v {
                            break;
                        }
                    }
                    comp.sort_unstable();
                    out.push(comp);
                }
            }
        }
    }
    out
}

/// BFS inside one component from its smallest node back to itself.
fn shortest_cycle(needs: &[Vec<usize>], comp: &[usize]) -> Option<Vec<usize>> {
    let n = needs.len();
    let mut in_comp = vec![false; n];
    for &c in comp {
        in_comp[c] = true;
    }
    let start = *comp.first()?;
    let mut parent: Vec<Option<usize>> = vec![None; n];
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in &needs[v] {
            if !in_comp[w] {
                continue;
            }
            if w == start {
                let mut path = vec![v];
                let mut cur = v;
                while let Some(p) = parent[cur] {
                    path.push(p);
                    cur = p;
                }
                path.reverse();
                return Some(path);
            }
            if parent[w].is_none() && w != start {
                parent[w] = Some(v);
                queue.push_back(w);
            }
        }
    }
    None
}
