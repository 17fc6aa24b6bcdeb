/**
 * The layer calls of a tfjs functional model as a graph: which call produced a symbolic tensor and
 * every call an output depends on, in an order where each comes after the calls it reads. Shared by
 * the ONNX export (inference) and the training-step graph.
 */
import type * as tfl from '@tensorflow/tfjs-layers';

export interface SymbolicTensorLike {
  id: number;
  shape: (number | null)[];
  sourceLayer: tfl.layers.Layer;
  nodeIndex: number;
}

export interface LayerNode {
  outboundLayer: tfl.layers.Layer;
  inputTensors: SymbolicTensorLike[];
  outputTensors: SymbolicTensorLike[];
}

function producer(t: SymbolicTensorLike): LayerNode {
  return (t.sourceLayer as unknown as { inboundNodes: LayerNode[] }).inboundNodes[t.nodeIndex];
}

/** The layer calls the output depends on, each after the calls it reads from. */
export function callsInOrder(output: SymbolicTensorLike): LayerNode[] {
  const order: LayerNode[] = [];
  const visited = new Set<LayerNode>();
  // Iterative depth-first post-order: a deep network must not exhaust the call stack.
  const stack: { node: LayerNode; next: number }[] = [{ node: producer(output), next: 0 }];
  visited.add(stack[0].node);
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    if (top.next < top.node.inputTensors.length) {
      const dep = producer(top.node.inputTensors[top.next++]);
      if (!visited.has(dep)) {
        visited.add(dep);
        stack.push({ node: dep, next: 0 });
      }
    } else {
      order.push(top.node);
      stack.pop();
    }
  }
  return order;
}
