/**
 * Gradients tfjs-core (4.22) does not define but a 3D U-Net decoder needs: Conv3DBackpropInputV2
 * is the forward op of tf.layers.conv3dTranspose, and without its gradient that layer cannot
 * train on any backend. Mirrors tfjs's own Conv2DBackpropInput gradient.
 */
import * as tf from '@tensorflow/tfjs-core';

const conv3DBackpropInputGradient: tf.GradConfig = {
  kernelName: 'Conv3DBackpropInputV2',
  inputsToSave: ['dy', 'filter'],
  gradFunc: (ddx: tf.Tensor | tf.Tensor[], saved: tf.Tensor[], attrs: tf.NamedAttrMap) => {
    const [dy, filter] = saved as [tf.Tensor5D, tf.Tensor5D];
    const upstream = ddx as tf.Tensor5D;
    const { strides, pad } = attrs as unknown as tf.Conv3DBackpropInputV2Attrs;
    return {
      dy: () => tf.conv3d(upstream, filter, strides, pad),
      filter: () =>
        tf.engine().runKernel('Conv3DBackpropFilterV2', { x: upstream, dy }, {
          strides,
          pad,
          filterShape: filter.shape,
        } as unknown as tf.NamedAttrMap) as tf.Tensor5D,
    };
  },
};

/** Registers the missing gradients (backend-independent); safe to call more than once. */
export function registerMissingGradients(): void {
  if (tf.getGradient(conv3DBackpropInputGradient.kernelName) === undefined) {
    tf.registerGradient(conv3DBackpropInputGradient);
  }
}
