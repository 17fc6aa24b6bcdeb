/**
 * Order statistics in place, by quickselect rather than a sort: medians run once per masked pixel
 * (N2V median replacement) and once per output pixel (median filters).
 */

type Samples = Float32Array | Float64Array;

/** Median of values[0..n) (mean of the two middle values for even n, as numpy); reorders values. */
export function medianInPlace(values: Samples, n: number): number {
  const upper = n >> 1;
  const upperValue = selectInPlace(values, n, upper);
  if (n % 2 === 1) return upperValue;
  // After selection everything before `upper` is <= values[upper]: the lower middle is their maximum.
  let lowerValue = values[0];
  for (let i = 1; i < upper; i++) if (values[i] > lowerValue) lowerValue = values[i];
  return 0.5 * (lowerValue + upperValue);
}

/** Hoare quickselect: puts the k-th smallest of a[0..n) at a[k], smaller-or-equal ones before it. */
export function selectInPlace(a: Samples, n: number, k: number): number {
  let lo = 0;
  let hi = n - 1;
  while (hi > lo) {
    const pivot = medianOfThree(a[lo], a[(lo + hi) >> 1], a[hi]);
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i] < pivot) i++;
      while (a[j] > pivot) j--;
      if (i <= j) {
        const t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else break;
  }
  return a[k];
}

function medianOfThree(a: number, b: number, c: number): number {
  return a < b ? (b < c ? b : a < c ? c : a) : a < c ? a : b < c ? c : b;
}
