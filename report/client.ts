/**
 * The report page's script (browser JavaScript, inlined by report/html.ts): fills the tile viewers
 * (split slider, toggle, zoom, z slider) from the embedded data and draws the plots with uPlot.
 * Kept as a string here because the page must carry it inline; it uses nothing but the DOM and the
 * global uPlot. `window.blindspotReport` exposes the data and the uPlot instances (tests read them).
 */
export const CLIENT_SCRIPT = String.raw`
(function () {
  'use strict';
  var data = JSON.parse(document.getElementById('report-data').textContent);
  var plots = {};
  window.blindspotReport = { data: data, plots: plots };

  // Tile viewers.
  document.querySelectorAll('.tile').forEach(function (el) {
    var tile = data.tiles[+el.dataset.image].tiles[+el.dataset.tile];
    var side = tile.shape[tile.shape.length - 1], rows = tile.shape[tile.shape.length - 2];
    var before = el.querySelector('img.before'), after = el.querySelector('img.after');
    var residual = el.querySelector('img.residual'), uncertainty = el.querySelector('img.uncertainty');
    var split = el.querySelector('input.split'), zoom = el.querySelector('select.zoom'), z = el.querySelector('input.z');
    var zLabel = el.querySelector('.z-label');
    var imgs = [before, after, residual, uncertainty].filter(Boolean);
    function showSlice(k) {
      if (before) before.src = tile.noisy[k];
      after.src = tile.denoised[k];
      if (residual) residual.src = tile.residual[k];
      if (uncertainty) uncertainty.src = tile.uncertainty[k];
      if (zLabel) zLabel.textContent = String(tile.z[k]);
    }
    function setZoom(f) {
      imgs.forEach(function (img) { img.style.width = side * f + 'px'; img.style.height = rows * f + 'px'; });
    }
    function setSplit(percent) {
      // The denoised image shows right of the split; at 0 the whole tile is denoised, at 100 all noisy.
      if (before) after.style.clipPath = 'inset(0 0 0 ' + percent + '%)';
    }
    showSlice(tile.z.length ? Math.floor(tile.z.length / 2) : 0);
    setZoom(+el.dataset.zoom);
    if (split) {
      setSplit(+split.value);
      split.addEventListener('input', function () { setSplit(+split.value); });
      el.querySelector('button.toggle').addEventListener('click', function () {
        split.value = +split.value >= 50 ? 0 : 100;
        setSplit(+split.value);
      });
    }
    zoom.addEventListener('change', function () { setZoom(+zoom.value); });
    if (z) z.addEventListener('input', function () { showSlice(+z.value); });
  });

  if (typeof uPlot === 'undefined') return;
  var width = Math.min(640, Math.max(360, Math.floor((document.body.clientWidth - 130) / 2)));
  var colours = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#e377c2', '#17becf'];

  // Vertical markers (learning-rate changes) drawn after the series.
  function markers(xs, labels) {
    return { hooks: { draw: [function (u) {
      var ctx = u.ctx;
      ctx.save();
      ctx.strokeStyle = '#888'; ctx.fillStyle = '#555'; ctx.setLineDash([4, 4]); ctx.lineWidth = 1;
      ctx.font = 11 * devicePixelRatio + 'px sans-serif';
      xs.forEach(function (x, i) {
        var px = Math.round(u.valToPos(x, 'x', true));
        ctx.beginPath(); ctx.moveTo(px, u.bbox.top); ctx.lineTo(px, u.bbox.top + u.bbox.height); ctx.stroke();
        ctx.fillText(labels[i], px + 3, u.bbox.top + 12 * devicePixelRatio);
      });
      ctx.restore();
    }] } };
  }

  function plot(id, opts, cols) {
    var el = document.getElementById(id);
    if (!el) return;
    opts.width = opts.width || width;
    opts.height = opts.height || 300;
    // Tick labels with 3 significant digits (uPlot's defaults repeat '0.001' on small ranges).
    (opts.axes || []).forEach(function (a) {
      if (!a.values) a.values = function (u, ticks) { return ticks.map(function (v) { return v == null ? '' : String(+v.toPrecision(3)); }); };
    });
    plots[id] = new uPlot(opts, cols, el);
  }

  var t = data.training;
  if (t) {
    var steps = t.history.map(function (h) { return h.step; });
    var secs = t.history.map(function (h) { return h.seconds; });
    var loss = t.history.map(function (h) { return h.loss; });
    var val = t.history.map(function (h) { return h.valLoss === undefined ? null : h.valLoss; });
    var lr = t.learningRateChanges;
    var lrLabels = lr.map(function (c) { return 'lr ' + c.to.toPrecision(2); });
    var series = [
      {},
      { label: 'training loss', stroke: colours[0], width: 1, points: { show: t.history.length <= 400, size: 3 } },
      { label: 'validation loss', stroke: colours[1], width: 2, spanGaps: true, points: { show: true, size: 6 } },
    ];
    // Log y over the data's own span (uPlot would round it out to whole decades).
    var finite = loss.concat(val).filter(function (v) { return v !== null && v > 0; });
    var yRange = function () { return [Math.min.apply(null, finite) * 0.9, Math.max.apply(null, finite) * 1.1]; };
    var scales = { x: { time: false }, y: { distr: 3, range: yRange } };
    plot('plot-loss-step', { title: 'Loss against step (log y)', scales: scales, series: [{ label: 'step' }].concat(series.slice(1)),
      axes: [{ label: 'step' }, { label: 'loss', size: 70 }], plugins: [markers(lr.map(function (c) { return c.step; }), lrLabels)] }, [steps, loss, val]);
    plot('plot-loss-time', { title: 'Loss against time (log y)', scales: scales, series: [{ label: 'seconds' }].concat(series.slice(1)),
      axes: [{ label: 'seconds since the run started' }, { label: 'loss', size: 70 }], plugins: [markers(lr.map(function (c) { return c.seconds; }), lrLabels)] }, [secs, loss, val]);
  }

  // Noise-level functions: one plot, up to 6 images; x = the union of bin and curve intensities.
  var noiseHolder = document.getElementById('noise-plots');
  if (noiseHolder && data.noise.length) {
    var curves = data.noise.slice(0, 6);
    var tables = [], nseries = [{ label: 'intensity' }];
    curves.forEach(function (c, i) {
      var colour = colours[i % colours.length];
      var name = c.name.length > 28 ? '...' + c.name.slice(-25) : c.name;
      var xsBins = c.bins.map(function (b) { return b.intensity; });
      tables.push([xsBins, c.bins.map(function (b) { return b.variance; })]);
      nseries.push({ label: name + ' bins', stroke: colour, width: 0, paths: function () { return null; }, points: { show: true, size: 5, fill: colour } });
      if (c.fitted.length) {
        tables.push([c.fitted.map(function (p) { return p.intensity; }), c.fitted.map(function (p) { return p.variance; })]);
        nseries.push({ label: name + ' NLF', stroke: colour, width: 2, spanGaps: true, points: { show: false } });
      }
      var xs = xsBins.length ? [Math.min.apply(null, xsBins), Math.max.apply(null, xsBins)] : [];
      if (xs.length && xs[1] > xs[0]) {
        tables.push([xs, xs.map(function (x) { return c.a * x + c.b; })]);
        nseries.push({ label: name + ' a x + b', stroke: colour, width: 1, dash: [6, 4], spanGaps: true, points: { show: false } });
      }
    });
    var box = document.createElement('div'); box.className = 'plot'; box.id = 'plot-noise'; noiseHolder.appendChild(box);
    plot('plot-noise', { title: 'Noise variance against intensity', width: Math.min(900, document.body.clientWidth - 60), scales: { x: { time: false } }, series: nseries,
      axes: [{ label: 'intensity (input units)' }, { label: 'variance', size: 70 }] }, uPlot.join(tables));
  }

  // Streamed run: per-chunk throughput, ETA, fetches and memory, one series per shard, resumed segments laid end to end.
  var s = data.stream;
  if (s && s.histories.length) {
    var tp = [], eta = [], fetch = [], mem = [], sseries = [{ label: 'seconds' }], cseries = [{ label: 'chunk' }];
    s.histories.forEach(function (h, i) {
      var offset = 0, xs = [], mvs = [], etas = [], ord = [], fs = [], rss = [];
      h.segments.forEach(function (g) {
        g.chunks.forEach(function (c) {
          xs.push(offset + c.seconds); mvs.push(c.megavoxelsPerSecond); etas.push(c.etaSeconds);
          ord.push(c.done); fs.push(c.fetches); rss.push(c.rssBytes / 1048576);
        });
        offset += g.seconds;
      });
      var name = h.shard ? 'shard ' + h.shard.index : 'run';
      var colour = colours[i % colours.length];
      tp.push([xs, mvs]); eta.push([xs, etas]); fetch.push([ord, fs]); mem.push([ord, rss]);
      sseries.push({ label: name, stroke: colour, width: 1.5, spanGaps: true, points: { size: 4 } });
      cseries.push({ label: name, stroke: colour, width: 1.5, spanGaps: true, points: { size: 4 } });
    });
    var sx = { x: { time: false } };
    plot('plot-throughput', { title: 'Throughput (megavoxels / s, running mean per segment)', scales: sx, series: sseries, axes: [{ label: 'seconds' }, { label: 'MVox/s', size: 60 }] }, uPlot.join(tp));
    plot('plot-eta', { title: 'ETA reported at each chunk', scales: sx, series: sseries, axes: [{ label: 'seconds' }, { label: 'ETA (s)', size: 60 }] }, uPlot.join(eta));
    plot('plot-fetches', { title: 'Input chunk fetches per output chunk', scales: sx, series: cseries, axes: [{ label: 'chunks done' }, { label: 'fetches', size: 60 }] }, uPlot.join(fetch));
    plot('plot-memory', { title: 'Resident memory (MiB)', scales: sx, series: cseries, axes: [{ label: 'chunks done' }, { label: 'RSS (MiB)', size: 60 }] }, uPlot.join(mem));
  }
})();
`;
